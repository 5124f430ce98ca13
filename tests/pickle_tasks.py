"""Functions whose pickles the fresh-pickle tests watch (tests/integration/test_fresh_pickles.py).

One test registers this module with cloudpickle.register_pickle_by_value after a first
submit; another counts calls in module state, which lives as long as the worker process.
"""

SOURCE = "the module's file"
CALLS = 0


def source() -> str:
    return SOURCE


def source_of(_item: object) -> str:
    return SOURCE


def count_calls() -> int:
    global CALLS
    CALLS += 1
    return CALLS

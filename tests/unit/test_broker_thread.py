"""The broker's thread must not share a namespace with threading.Thread.

Python 3.13's ``Thread.__init__`` assigns ``self._handle``; while ``Broker`` subclassed
``Thread`` and had a method of that name, every message crashed the handler and a user
read only "worker did not connect within 60 s". The broker now holds its thread.
"""

from __future__ import annotations

import threading

from impexec._broker import Broker


def test_broker_is_not_a_thread_subclass():
    assert not issubclass(Broker, threading.Thread)


def test_no_broker_attribute_is_shadowed_by_the_running_pythons_thread():
    # whatever this interpreter's Thread.__init__ sets must not collide with a method
    thread_attrs = set(vars(threading.Thread()))
    methods = {name for name in dir(Broker) if callable(getattr(Broker, name, None))}
    assert not (thread_attrs & methods & set(vars(Broker)))


def test_broker_runs_and_stops_on_this_python(make_broker):
    b = make_broker()
    b.start()
    try:
        assert b.is_alive()
        assert b.statistics(timeout=10).workers == 0
    finally:
        b.stop_when_idle()
        b.join(10)
    assert not b.is_alive()
    assert b.crash is None

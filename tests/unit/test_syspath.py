"""How a worker merges the client's sys.path into its own (impexec._syspath)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from impexec import _syspath

CWD = "/home/u/elsewhere"
STDLIB = ["/py/lib/python3.11", "/py/lib/python3.11/lib-dynload"]
SITE = "/py/lib/python3.11/site-packages"


def test_the_clients_entries_keep_their_place_among_shared_ones() -> None:
    client = ["/home/u/proj", "/pp", *STDLIB, SITE, "/appended"]
    own = [CWD, "/pkgroot", "/pp", *STDLIB, SITE]
    merged = _syspath.merge(client, [*STDLIB, SITE], own, CWD)
    assert merged == ["/pkgroot", "/home/u/proj", "/pp", *STDLIB, SITE, "/appended"]


def test_another_interpreters_worker_does_not_get_the_clients_installation() -> None:
    client = ["/home/u/proj", *STDLIB, SITE, "/home/u/.local/lib/python3.11/site-packages"]
    installation = [*STDLIB, SITE, "/home/u/.local/lib/python3.11/site-packages"]
    own = [CWD, "/other/lib/python3.12", "/other/lib/python3.12/site-packages"]
    merged = _syspath.merge(client, installation, own, CWD)
    assert merged == ["/other/lib/python3.12", "/other/lib/python3.12/site-packages", "/home/u/proj"]


def test_the_workers_directory_stays_when_the_client_has_it_too() -> None:
    merged = _syspath.merge([CWD, SITE], [SITE], [CWD, SITE], CWD)
    assert merged == [CWD, SITE]


def test_capture_marks_this_interpreters_installation_and_resolves_relative_entries() -> None:
    site_dir = next(p for p in sys.path if p.endswith("site-packages"))
    data = json.loads(_syspath.capture(["", "rel", site_dir, b"/bytes", 3]))
    assert data["path"] == [os.getcwd(), os.path.abspath("rel"), site_dir]
    assert data["installation"] == [site_dir]


def test_adopt_takes_the_path_once_and_ignores_a_malformed_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "path", [os.getcwd(), *sys.path[1:]])
    monkeypatch.setenv(_syspath.ENV, json.dumps({"path": ["/from/client"], "installation": []}))
    _syspath.adopt()
    assert sys.path[-1] == "/from/client"
    assert _syspath.ENV not in os.environ  # not passed on to what tasks start
    before = list(sys.path)
    monkeypatch.setenv(_syspath.ENV, "{not json")
    _syspath.adopt()
    assert sys.path == before
    assert "malformed" in caplog.text

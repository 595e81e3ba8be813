"""GET /add: the end-to-end path through broker, worker and result backend."""

import pytest


def test_add_end_to_end(web):
    resp = web.get("/add?x=2&y=3")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert body["result"] == 5
    assert isinstance(body["result"], int)
    assert body["task_id"]
    assert resp.headers["Content-Type"].startswith("application/json")


def test_add_floats_and_negatives(web):
    assert web.get("/add?x=1.5&y=-0.25").json()["result"] == 1.25
    assert web.get("/add?x=-7&y=1e2").json()["result"] == 93.0


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("", "x"),
        ("?y=1", "x"),
        ("?x=1", "y"),
        ("?x=&y=1", "x"),
        ("?x=abc&y=1", "x"),
        ("?x=1&y=nan", "y"),
        ("?x=1&y=inf", "y"),
        ("?x=1&y=1e999", "y"),
        ("?x=0x10&y=1", "x"),
        ("?x=1_000&y=1", "x"),
    ],
)
def test_add_rejects_bad_parameters(web, query, param):
    resp = web.get(f"/add{query}")
    assert resp.status == 400
    assert f"'{param}'" in resp.json()["error"]

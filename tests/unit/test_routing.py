"""Routing between aliases (`pipelines.model.routing`): the split's accuracy and stickiness over
10,000 keys, a growing canary keeps its keys, the config and the live routing document, and
the worker's follower keeping its routing when the document is broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import isolated_settings, with_params

from pipelines.core import locations
from pipelines.core.config import load_config
from pipelines.model import routing

KEYS = [f"caller-{i}" for i in range(10_000)]


@pytest.fixture(scope="module")
def cfg():
    base = load_config()
    return with_params(base, serving__aliases=["champion", "challenger"])


@pytest.mark.parametrize("challenger", [0.0, 5.0, 25.0, 50.0, 90.0, 100.0])
def test_the_split_is_within_two_points_of_its_weight_over_10000_keys(challenger):
    r = routing.make_routing({"champion": 100 - challenger, "challenger": challenger}, None,
                             "champion")
    shares = [routing.choose(r, k) for k in KEYS]
    observed = shares.count("challenger") / len(KEYS)
    assert abs(observed - challenger / 100) <= 0.02, observed
    if challenger in (0.0, 100.0):  # a zero weight never answers
        assert observed == challenger / 100


def test_three_candidates_share_in_proportion_to_weights():
    r = routing.make_routing({"champion": 2, "a": 1, "b": 1}, None, "champion")
    shares = [routing.choose(r, k) for k in KEYS]
    for alias, want in (("champion", 0.5), ("a", 0.25), ("b", 0.25)):
        assert abs(shares.count(alias) / len(KEYS) - want) <= 0.02


def test_every_key_always_gets_the_same_variant():
    """100% stickiness: the same key, asked again, from a routing built again (another worker),
    answers the same alias; the order candidates are given in does not matter."""
    one = routing.make_routing({"champion": 50, "challenger": 50}, None, "champion")
    other = routing.make_routing({"challenger": 50, "champion": 50}, None, "champion")
    first = [routing.choose(one, k) for k in KEYS]
    assert [routing.choose(one, k) for k in KEYS] == first
    assert [routing.choose(other, k) for k in KEYS] == first
    assert 0.45 < first.count("challenger") / len(KEYS) < 0.55  # not trivially one alias


def test_a_growing_canary_keeps_the_keys_it_had():
    """5% -> 25% -> 50% -> 100%: a key the challenger answered stays with the challenger."""
    before: set[str] = set()
    for weight in (5, 25, 50, 100):
        r = routing.make_routing({"champion": 100 - weight, "challenger": weight}, None,
                                 "champion")
        now = {k for k in KEYS if routing.choose(r, k) == "challenger"}
        assert before <= now
        before = now
    assert len(before) == len(KEYS)


def test_the_mirror_takes_its_percentage_independently_of_the_split():
    r = routing.make_routing({"champion": 50, "challenger": 50},
                             {"alias": "challenger", "percent": 30.0}, "champion")
    mirrored = [k for k in KEYS if routing.mirrored(r, k) == "challenger"]
    assert abs(len(mirrored) / len(KEYS) - 0.30) <= 0.02
    served = [routing.choose(r, k) for k in mirrored]
    assert abs(served.count("challenger") / len(served) - 0.5) <= 0.04
    assert routing.mirrored(routing.make_routing({"champion": 1}, None, "champion"), "k") is None


@pytest.mark.parametrize("candidates", [{}, {"champion": -1, "challenger": 2},
                                        {"champion": 0, "challenger": 0}])
def test_bad_weights_are_refused(candidates):
    with pytest.raises(ValueError, match="weight"):
        routing.make_routing(candidates, None, "champion")


def test_without_routing_the_first_alias_answers_everything(cfg):
    r = routing.configured(load_config())
    assert r.shares == {"champion": 1.0} and r.mirror is None
    assert {routing.choose(r, k) for k in KEYS[:500]} == {"champion"}
    assert routing.configured(cfg).shares == {"champion": 1.0}


def test_config_refuses_routing_to_an_alias_not_followed():
    base = load_config()
    assert base.serving.aliases == ("champion", "challenger")  # the default follows both
    with pytest.raises(ValidationError, match="does not follow"):
        with_params(base, serving__aliases=["champion"],
                    serving__routing__candidates={"champion": 90, "challenger": 10})
    with pytest.raises(ValidationError, match="does not follow"):
        with_params(base, serving__routing__mirror={"alias": "shadow", "percent": 10})
    with pytest.raises(ValidationError, match="exactly one"):
        with_params(base, serving__routing__sticky={"header": "x-a", "input": "b"})
    ok = with_params(base, serving__routing__candidates={"champion": 90, "challenger": 10})
    assert routing.configured(ok).shares == {"challenger": 0.1, "champion": 0.9}


def test_the_live_document_overrides_the_config_and_resets_to_the_champion(cfg, tmp_path):
    settings = isolated_settings(tmp_path)
    assert routing.current(settings, cfg).shares == {"champion": 1.0}
    state = routing.set_routing(settings, cfg, {"champion": 75, "challenger": 25},
                                {"alias": "challenger", "percent": 100.0}, "run-1", "canary")
    doc = json.loads(Path(locations.routing(settings)).read_text())
    assert doc == json.loads(json.dumps(state)) and doc["actor"] == "run-1"
    live = routing.current(settings, cfg)
    assert live.shares == {"challenger": 0.25, "champion": 0.75}
    assert live.mirror == {"alias": "challenger", "percent": 100.0}
    routing.reset_routing(settings, cfg, "run-2", "rollback")
    back = routing.current(settings, cfg)
    assert back.shares == {"champion": 1.0} and back.mirror is None
    with pytest.raises(ValueError, match="does not follow"):
        routing.set_routing(settings, cfg, {"champion": 1, "other": 1}, None, "r", "x")


def test_a_broken_document_keeps_the_routing_the_worker_had(cfg, tmp_path):
    from pipelines.serving.routing import RoutingFollower

    settings = isolated_settings(tmp_path)
    follower = RoutingFollower(settings, cfg)
    routing.set_routing(settings, cfg, {"champion": 50, "challenger": 50}, None, "r", "ab")
    follower.poll()
    assert follower.current.shares == {"challenger": 0.5, "champion": 0.5}
    for broken in ("{not json", json.dumps({"candidates": {"champion": "all"}}),
                   json.dumps({"candidates": {"champion": 0}})):
        Path(locations.routing(settings)).write_text(broken)
        follower.poll()
        assert follower.current.shares == {"challenger": 0.5, "champion": 0.5}
    routing.reset_routing(settings, cfg, "r", "back")
    follower.poll()
    assert follower.current.shares == {"champion": 1.0}


def test_a_rollback_resets_routing_to_the_champion_and_records_it(cfg, tmp_path):
    """Blue-green's way back (what the rollback DAG's `reset_routing` task and the CLI run):
    the champion only, no mirror, and a `routing_reset` event naming what it replaced."""
    from pipelines.model.registry import history

    settings = isolated_settings(tmp_path)
    routing.set_routing(settings, cfg, {"champion": 50, "challenger": 50},
                        {"alias": "challenger", "percent": 100.0}, "rollout-1", "ab")
    state = routing.roll_back_routing(settings, cfg, "rollback-1", "incident", user="ada")
    assert state["candidates"] == {"champion": 100.0} and state["mirror"] is None
    live = routing.current(settings, cfg)
    assert live.shares == {"champion": 1.0} and live.mirror is None
    (event,) = history(settings)
    assert event["action"] == "routing_reset" and event["user"] == "ada"
    assert event["routing_before"] == {"candidates": {"champion": 50.0, "challenger": 50.0},
                                       "mirror": {"alias": "challenger", "percent": 100.0}}
    assert event["routing_after"] == {"candidates": {"champion": 100.0}, "mirror": None}

"""edge.decide: flagging rules and k-of-n debounce on scripted score sequences."""

from __future__ import annotations

import datetime as dt

import pytest

from edge.decide import Decider, frame_flags, iso_utc

LABELS = ("good", "error", "break", "length")
THR = {"good": 0.5, "error": 0.5, "break": 0.5, "length": 0.5}


def s(error=0.0, brk=0.0, length=0.9, good=None):
    good = 1.0 - max(error, brk) if good is None else good
    return {"good": good, "error": error, "break": brk, "length": length}


def run(dec: Decider, seq_scores, start=0):
    out = []
    for i, sc in enumerate(seq_scores, start):
        out += dec.update(i, 1_700_000_000.0 + i / 30, sc, image=f"img{i}")
    return out


def test_frame_flags_length_rules():
    assert frame_flags(s(length=0.2), THR, "2mm") == {"length": pytest.approx(0.8)}
    assert frame_flags(s(length=0.9), THR, "2mm") == {}
    assert frame_flags(s(length=0.9), THR, "4mm") == {"length": pytest.approx(0.9)}
    assert frame_flags(s(length=0.2), THR, "4mm") == {}
    assert frame_flags(s(length=0.0), THR, "any") == {}
    # good is never an alert label; thresholds are per label
    assert frame_flags(s(error=0.6, brk=0.6), {**THR, "break": 0.7}, "any") == {"error": 0.6}


def test_one_defect_one_alert_with_best_frame():
    dec = Decider(LABELS, THR, expected_length="2mm", min_frames=2, window=3, id_prefix="st-abc")
    seq = [s()] * 10 + [s(error=x) for x in (0.6, 0.7, 0.95, 0.8, 0.3, 0.7, 0.6)] + [s()] * 10
    alerts = run(dec, seq)
    assert len(alerts) == 1
    a = alerts[0]
    assert a.frame == 12 and a.image == "img12"  # highest error score of the event
    assert a.labels == ("error",)
    assert a.first_frame == 11 and a.last_frame == 16  # opened on the k-th flagged frame
    assert a.scores["error"] == pytest.approx(0.95)
    assert a.event_id == "st-abc-000001"
    # emitted n quiet frames after the last flagged one (the latency trade-off)
    dec2 = Decider(LABELS, THR, min_frames=2, window=3)
    emitted_at = [i for i, sc in enumerate(seq) if dec2.update(i, 0.0, sc)]
    assert emitted_at == [16 + 3]


def test_single_glitch_is_debounced():
    dec = Decider(LABELS, THR, min_frames=2, window=3)
    seq = [s()] * 5 + [s(brk=0.99)] + [s()] * 5 + [s(brk=0.9), s(), s(), s(brk=0.9)] + [s()] * 5
    assert run(dec, seq) == []
    assert dec.events_opened == 0


def test_k_of_n_with_gap_opens_and_two_defects_two_alerts():
    dec = Decider(LABELS, THR, min_frames=2, window=3)
    seq = [s()] * 3 + [s(error=0.9), s(), s(error=0.8)] + [s()] * 6 + [s(brk=0.7), s(brk=0.9)] + [s()] * 6
    alerts = run(dec, seq)
    assert [a.labels for a in alerts] == [("error",), ("break",)]
    assert len({a.event_id for a in alerts}) == 2


def test_error_and_break_on_one_defect_is_one_alert_length_is_separate():
    dec = Decider(LABELS, THR, expected_length="2mm", min_frames=2, window=3)
    seq = [s()] * 3 + [s(error=0.7, brk=0.8, length=0.1)] * 4 + [s()] * 5
    alerts = run(dec, seq)
    assert sorted(a.track for a in alerts) == ["defect", "length"]
    defect = next(a for a in alerts if a.track == "defect")
    assert defect.labels == ("error", "break")
    length = next(a for a in alerts if a.track == "length")
    assert length.labels == ("length",)


def test_expected_length_any_never_alerts_length():
    dec = Decider(LABELS, THR, expected_length="any", min_frames=1, window=1)
    assert run(dec, [s(length=0.0)] * 20 + [s(length=1.0)] * 20) == []


def test_long_condition_realerts_after_max_event_frames_and_flush():
    dec = Decider(LABELS, THR, expected_length="4mm", min_frames=2, window=3, max_event_frames=10)
    alerts = run(dec, [s(length=0.9)] * 25)
    assert len(alerts) == 2 and all(a.labels == ("length",) for a in alerts)
    assert dec.open_events == 1
    rest = dec.flush()
    assert len(rest) == 1 and dec.open_events == 0
    ids = [a.event_id for a in alerts + rest]
    assert len(set(ids)) == 3


def test_idle_suspends_realerting_of_a_standing_event():
    """A stopped machine shows the same defect for minutes: no re-alert every max_event_frames."""
    dec = Decider(LABELS, THR, expected_length="4mm", min_frames=2, window=3, max_event_frames=10)
    alerts = []
    for i in range(60):  # frames 5..44 idle: the event stays open past max_event_frames
        alerts += dec.update(i, 1_700_000_000.0 + i / 30, s(length=0.9), idle=5 <= i < 45)
    # moving 0..4: no alert yet; idle 5..44: none; moving again at 45: the 45-frame event is emitted
    # on its first moving frame, then a new one re-alerts 10 frames later (frame 55)
    assert [(a.first_frame, a.last_frame) for a in alerts] == [(1, 45), (46, 55)]
    assert dec.open_events == 1
    # an event also closes normally while idle when the defect is gone
    dec2 = Decider(LABELS, THR, expected_length="4mm", min_frames=2, window=3, max_event_frames=10)
    idle_alerts = run_idle(dec2, [s(length=0.9)] * 30 + [s(length=0.1)] * 3)
    assert [(a.first_frame, a.last_frame) for a in idle_alerts] == [(1, 29)]
    assert dec2.open_events == 0


def run_idle(dec: Decider, seq_scores):
    out = []
    for i, sc in enumerate(seq_scores):
        out += dec.update(i, 1_700_000_000.0 + i / 30, sc, idle=True)
    return out


def test_cooldown_suppresses_reopen():
    dec = Decider(LABELS, THR, min_frames=1, window=2, cooldown_frames=10)
    seq = [s(error=0.9)] + [s()] * 2 + [s(error=0.9)] + [s()] * 20 + [s(error=0.9)] + [s()] * 3
    alerts = run(dec, seq)
    assert [a.frame for a in alerts] == [0, 24]


def test_sequence_scores_in_label_order_and_payload():
    dec = Decider(LABELS, THR, min_frames=1, window=1, id_prefix="sew-03-1a2b3c4d")
    ts = 1_700_000_000.25
    assert dec.update(0, ts, [0.1, 0.9, 0.2, 0.8]) == []
    (a,) = dec.update(1, ts + 1, [0.9, 0.1, 0.2, 0.8])
    p = a.payload("sew-03", "seam-default", "ab" * 32, "/hm/x.jpg")
    assert set(p) >= {"event_id", "station", "ts", "frame", "labels", "scores", "heatmap", "model"}
    assert p["station"] == "sew-03" and p["frame"] == 0 and p["labels"] == ["error"]
    assert p["scores"] == {"good": 0.1, "error": 0.9, "break": 0.2, "length": 0.8}
    assert p["model"] == {"name": "seam-default", "sha256": "ab" * 32}
    assert dt.datetime.fromisoformat(p["ts"].replace("Z", "+00:00")).timestamp() == pytest.approx(ts, abs=1e-3)
    assert iso_utc(ts).endswith("Z")


def test_bad_parameters():
    with pytest.raises(ValueError):
        Decider(LABELS, THR, min_frames=4, window=3)
    with pytest.raises(ValueError):
        Decider(LABELS, THR, expected_length="3mm")

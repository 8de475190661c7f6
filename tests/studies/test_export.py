from __future__ import annotations

import csv
import json

import pytest
import torch

from allocator import LookupFileError, evaluate_tokens, load_lookup, load_model, lookup_thresholds, read_lookup
from allocator.testing.tiny import build_tiny_model
from storage import Database
from studies import (
    create_study,
    evaluate_candidate,
    export_candidates,
    export_study,
    load_config,
    load_optuna_study,
    open_session,
    run_study,
)


@pytest.fixture
def exported(sqlite_url, write_config, tmp_path):
    # Enough calibration text that thresholds estimated on it hold on other documents within half a point.
    data = {"seq_len": 64, "calibration_sequences": 24}
    config, _ = load_config(
        write_config(trials=6, data=data, search={"promote_sequences": [4], "validation_candidates": 2})
    )
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    out = tmp_path / "export"
    return session, export_study(session, out), out


def test_lookup_on_a_fresh_model_reproduces_the_exports_heldout_figures(exported, trained_tiny_dir):
    session, result, out = exported
    fresh = load_model(trained_tiny_dir)
    reference = session.reference("heldout")
    with load_lookup(fresh.model, out) as sparsifiers:
        evaluation = evaluate_tokens(
            fresh.adapter,
            session.tokens.heldout,
            reference=reference,
            batch_size=3,
            measured_sparsity=sparsifiers.measured_model_sparsity,
        )
    exported = result.heldout.thresholds
    assert evaluation.perplexity == pytest.approx(exported.perplexity, rel=1e-4)
    assert evaluation.kl == pytest.approx(exported.kl, rel=1e-3)
    assert evaluation.measured_sparsity == pytest.approx(exported.measured_sparsity, abs=1e-9)
    assert result.heldout.exact.measured_sparsity == pytest.approx(0.5, abs=0.005)  # the comparison's footing
    assert not any(m._forward_pre_hooks for m in fresh.model.modules())  # removed on exit


def test_the_exported_trial_is_the_validation_best_of_the_most_promoted(exported):
    session, result, _ = exported
    study = load_optuna_study(session)
    candidates = export_candidates(study, 2)
    most = max(len(t.user_attrs["rung_values"]) for t in study.trials if t.state.name == "COMPLETE")
    assert all(len(t.user_attrs["rung_values"]) == most for t in candidates) and len(candidates) == result.candidates
    validation = {t.number: evaluate_candidate(session, t).validation.kl for t in candidates}
    assert result.trial_number == min(validation, key=validation.get)
    assert result.validation.kl == pytest.approx(validation[result.trial_number])


def test_exported_thresholds_meet_the_target_on_the_search_tokens(exported):
    session, result, out = exported
    lookup = read_lookup(out)
    vector = [block["sparsity"] for block in lookup["blocks"]]
    screen = session.evaluate(
        vector, "search", index=session.rungs_order()[:64], rule="threshold", thresholds=lookup_thresholds(lookup)
    )
    target = session.sparse_model.site_sparsities(vector)
    assert abs(screen.measured_sparsity - 0.5) <= 0.005  # model level: within half a point
    # Per site, this tiny model's `o` input differs from document to document by a few points; the test on
    # SmolLM2 (tests/allocator/test_smollm2.py) holds every site to one point.
    assert float((torch.tensor(screen.site_sparsity) - target).abs().max()) <= 0.03
    assert screen.measured_sparsity == pytest.approx(result.search_measured_sparsity)


def test_lookup_document(exported):
    session, result, out = exported
    lookup = read_lookup(out)
    assert lookup["format"] == "sparsealloc.lookup/v1"
    assert lookup["model"]["fingerprint"] == session.loaded.fingerprint
    assert lookup["study"]["trial"] == result.trial_number
    assert lookup["study"]["chosen_by"] == "validation kl"
    assert lookup["study"]["heldout"]["with_thresholds"]["kl"] == pytest.approx(result.heldout.thresholds.kl)
    assert lookup["study"]["heldout"]["exact"]["kl"] == pytest.approx(result.heldout.exact.kl)
    assert (out / "nncf.json").is_file()
    assert lookup["study"]["heldout_perplexity"] == pytest.approx(result.heldout_perplexity)
    assert abs(lookup["achieved_sparsity"] - 0.5) < 1e-6
    assert set(lookup["blocks"][0]["sites"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert lookup["calibration"]["hashes"]["calibration"] == session.tokens.hash("calibration")


def test_teal_files(exported):
    session, _, out = exported
    vector = json.loads((out / "block_sparsities.json").read_text())
    for layer in range(session.loaded.adapter.n_blocks):
        for group in ("self_attn", "mlp"):
            hist = torch.load(out / "histograms" / f"layer-{layer}" / group / "histograms.pt", weights_only=True)
            assert set(hist) == {"h1", "h1_centers", "h2", "h2_centers"}
            assert bool((hist["h1_centers"][1:] > hist["h1_centers"][:-1]).all())
        with (out / "lookup" / f"layer-{layer}" / "results.csv").open() as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == [
            "Effective Sparsity",
            "Activation Error",
            "Baseline Error",
            "q",
            "k",
            "v",
            "o",
            "gate",
            "up",
            "down",
        ]
        effective = [float(row[0]) for row in rows[1:]]
        assert effective == sorted(effective)
        nearest = min(effective, key=lambda e: abs(e - vector[layer]))
        assert nearest == pytest.approx(vector[layer], abs=1e-12)  # TEAL's nearest-row pick is exact


def test_export_replaces_the_previous_one_whole(exported, tmp_path):
    session, _, out = exported
    stale = out / "histograms" / "layer-99"
    stale.mkdir()
    (stale / "histograms.pt").write_text("from an older export of a deeper model")
    export_study(session, out)
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no staging left behind


def test_lookup_of_another_model_is_refused(exported, tiny_tokenizer, tmp_path):
    _, _, out = exported
    deeper = build_tiny_model("llama", len(tiny_tokenizer), n_layers=4)
    with pytest.raises(LookupFileError, match="made for another model"):
        load_lookup(deeper, out)
    other = build_tiny_model("qwen2", len(tiny_tokenizer))
    with pytest.raises(LookupFileError, match="is for a 'llama' model, not 'qwen2'"):
        load_lookup(other, out)


def test_unknown_version_and_corruption_are_refused(exported, trained_tiny_dir):
    _, _, out = exported
    model = load_model(trained_tiny_dir).model
    path = out / "lookup.json"
    lookup = json.loads(path.read_text())
    path.write_text(json.dumps({**lookup, "format": "sparsealloc.lookup/v9"}))
    with pytest.raises(LookupFileError, match=r"has format 'sparsealloc\.lookup/v9'"):
        load_lookup(model, out)
    path.write_text(json.dumps(lookup)[:-200])
    with pytest.raises(LookupFileError, match="corrupted or truncated"):
        load_lookup(model, out)
    del lookup["blocks"][1]["sites"]["down"]
    path.write_text(json.dumps(lookup))
    with pytest.raises(LookupFileError, match="incomplete or malformed"):
        load_lookup(model, out)


def test_export_without_a_finished_trial_is_refused(sqlite_url, write_config, tmp_path):
    config, _ = load_config(write_config())
    database = Database(sqlite_url)
    create_study(database, config)
    with pytest.raises(ValueError, match="has no finished trial to export"):
        export_study(open_session(database, config), tmp_path / "out")
    assert not (tmp_path / "out").exists()

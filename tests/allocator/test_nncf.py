"""NNCF as a consumer of our exports, with the real nncf package on tiny random-weight models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from allocator import (
    SITE_NAMES,
    LookupFileError,
    Score,
    build_lookup,
    calibrate,
    compute_reference,
    evaluate_tokens,
    load_model,
    write_lookup,
)
from allocator.errors import NNCFNotInstalledError
from allocator.integrations.nncf import (
    NNCF_FILE,
    measured_site_sparsity,
    nncf_sparsifiers,
    nncf_targets,
    sparsify,
    write_nncf_file,
)
from allocator.integrations.nncf import (
    evaluate as nncf_evaluate,
)
from allocator.testing.tiny import build_tiny_model, save_model_dir

SEQ_LEN = 64


@pytest.fixture
def nncf():
    """The real nncf package (the `nncf` extra); the tests that run it skip, with the reason, where it is missing."""
    return pytest.importorskip("nncf", reason="needs the `nncf` extra: pip install -e '.[nncf]'")


def _windows(tokenizer, topics: list[str], count: int) -> torch.Tensor:
    """``count x SEQ_LEN`` token ids: windows spread evenly over ``topics`` (documents no other role reads)."""
    ids = torch.tensor(tokenizer("\n".join(topics))["input_ids"])
    starts = torch.linspace(0, ids.numel() - SEQ_LEN, count).long()
    return torch.stack([ids[start : start + SEQ_LEN] for start in starts.tolist()])  # (N, T)


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer) -> dict[str, torch.Tensor]:
    """256 calibration and 256 held windows, alternating through the same pydoc documents (16k tokens each).

    Held windows are tokens NNCF never calibrated on, from the documents it did: a random-weight model's
    attention output (the ``o`` input) shifts by a few points of sparsity from one set of documents to
    another, for any sparsifier (ours too), and that text shift is not what these tests are about. So many
    short windows, too, since the tokens of one window are strongly correlated there.
    """
    from pydoc_data.topics import topics

    windows = _windows(tiny_tokenizer, [topics[key] for key in sorted(topics)][20:], 512)
    return {"calibration": windows[0::2], "heldout": windows[1::2]}


def _site_sparsities(n_blocks: int) -> torch.Tensor:
    """A ``n_blocks x 7`` table with every site at its own value (0.25 to 0.75), so a mix-up shows."""
    site = torch.arange(len(SITE_NAMES), dtype=torch.float64)
    block = torch.arange(n_blocks, dtype=torch.float64)[:, None]
    return 0.25 + 0.05 * site + 0.1 * block


def _export(model_dir: Path, calibration_tokens: torch.Tensor, out: Path) -> dict:
    """A real lookup (magnitude score, calibrated on ``calibration_tokens``) written to ``out`` with nncf.json."""
    loaded = load_model(model_dir)
    adapter = loaded.adapter
    calibration = calibrate(adapter, calibration_tokens, score=Score(), model_fingerprint=loaded.fingerprint)
    sites = _site_sparsities(adapter.n_blocks)
    weights = adapter.site_weights()
    lookup = build_lookup(
        model=loaded.identity(),
        score=Score(),
        sparsify_fraction=1.0,
        split="uniform",
        target=float((sites * weights).sum() / weights.sum()),
        block_sparsities=(sites * weights).sum(dim=1) / weights.sum(dim=1),
        site_sparsities=sites,
        thresholds=calibration.thresholds(sites),
        site_weights=weights,
        calibration={"tokens": calibration.n_tokens},
        study={"name": "nncf-test"},
    )
    write_lookup(out, lookup, extra=lambda directory: write_nncf_file(directory, lookup))
    return lookup


@pytest.fixture(scope="module")
def llama_export(tiny_tokenizer, tokens, tmp_path_factory) -> tuple[Path, Path, dict]:
    model_dir = save_model_dir(
        build_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, tmp_path_factory.mktemp("m")
    )
    out = tmp_path_factory.mktemp("export") / "lookup"
    return model_dir, out, _export(model_dir, tokens["calibration"], out)


def test_nncf_meets_every_sites_sparsity_on_heldout_tokens(nncf, llama_export, tokens):
    model_dir, out, lookup = llama_export
    model = load_model(model_dir).model
    sparse = sparsify(model, out, tokens["calibration"], batch_size=64)
    document = json.loads((out / NNCF_FILE).read_text())
    expected = {target["scope"]: target["sparsity"] for target in document["targets"]}
    assert set(nncf_sparsifiers(sparse)) == set(expected)  # one NNCF sparsifier per site, no other
    measured = measured_site_sparsity(sparse, tokens["heldout"], batch_size=64)
    deviation = {node: measured[node] - expected[node] for node in expected}
    assert max(abs(d) for d in deviation.values()) <= 0.02, deviation
    # nncf.json's targets are the lookup's per-site sparsities, block by block.
    for target in document["targets"]:
        assert target["sparsity"] == lookup["blocks"][target["block"]]["sites"][target["site"]]["sparsity"]
    # Block 0's q/k/v read the embeddings' norm, which nothing sparsified before them touches: there NNCF's
    # quantile of |x| and the lookup's threshold (our histogram, same tokens) are the same number.
    thresholds = {node: float(module.running_threshold) for node, module in nncf_sparsifiers(sparse).items()}
    for target in document["targets"][:3]:
        ours = lookup["blocks"][0]["sites"][target["site"]]["threshold"]
        assert thresholds[target["scope"]] == pytest.approx(ours, rel=0.02)


def test_nncf_models_are_evaluated_through_nncfs_own_forward(nncf, llama_export, tokens):
    """NNCF's hooks run only inside the wrapped model's forward: our chunked evaluation, which calls the body
    and the head itself, sees the dense model; the integration's evaluation sees NNCF's sparse one."""
    model_dir, out, lookup = llama_export
    heldout = tokens["heldout"][:32]
    dense = load_model(model_dir)
    reference = compute_reference(dense.adapter, heldout)
    on_dense = nncf_evaluate(dense.model, heldout, reference=reference)
    assert on_dense.perplexity == pytest.approx(evaluate_tokens(dense.adapter, heldout).perplexity, rel=1e-5)
    assert on_dense.kl == pytest.approx(0.0, abs=1e-5) and on_dense.measured_sparsity == 0.0
    loaded = load_model(model_dir)
    sparse = sparsify(loaded.model, out, tokens["calibration"], batch_size=64)
    evaluation = nncf_evaluate(sparse, heldout, reference=reference)
    bypassed = evaluate_tokens(loaded.adapter, heldout)  # body and head called directly: NNCF's hooks skipped
    assert bypassed.perplexity == pytest.approx(on_dense.perplexity, rel=1e-5)
    assert evaluation.kl > 100 * max(on_dense.kl, 1e-6) and evaluation.perplexity != on_dense.perplexity
    assert evaluation.measured_sparsity == pytest.approx(lookup["achieved_sparsity"], abs=0.05)


def test_nncf_json_scopes_are_the_linear_nodes_of_nncfs_graph(nncf, tiny_model_dir, tokens, tmp_path):
    lookup = _export(tiny_model_dir, tokens["calibration"][:4], tmp_path / "lookup")
    document = json.loads((tmp_path / "lookup" / NNCF_FILE).read_text())
    assert document["format"] == "sparsealloc.nncf/v1"
    assert [(t["block"], t["site"]) for t in document["targets"]] == [
        (b, site) for b in range(lookup["model"]["n_blocks"]) for site in SITE_NAMES
    ]
    model = load_model(tiny_model_dir).model
    assert nncf_targets(lookup, model) == {t["scope"]: t["sparsity"] for t in document["targets"]}
    graph = nncf.build_graph(model, example_input={"input_ids": tokens["heldout"][:1]})
    linear = {node.node_name for node in graph.get_all_nodes() if node.node_type == "linear"}
    assert linear - {t["scope"] for t in document["targets"]} == {"lm_head/linear/0"}
    assert {t["scope"] for t in document["targets"]} <= linear


def test_nncf_json_is_written_without_torch_or_nncf(llama_export, tmp_path):
    _, out, _ = llama_export
    probe = (
        "import importlib.abc, json, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'nncf', 'transformers'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pathlib import Path\n"
        "from allocator.integrations.nncf import write_nncf_file\n"
        f"lookup = json.loads(Path({str(out / 'lookup.json')!r}).read_text())\n"
        f"write_nncf_file(Path({str(tmp_path)!r}), lookup)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120)
    assert (tmp_path / NNCF_FILE).read_text() == (out / NNCF_FILE).read_text()


def test_what_nncf_does_differently_is_noted_and_a_broken_lookup_refused(llama_export, tmp_path):
    _, _, lookup = llama_export
    weight_aware = {**lookup, "score": {"kind": "weight_aware", "norm": 1}, "sparsify_fraction": 0.5}
    write_nncf_file(tmp_path, weight_aware)
    notes = json.loads((tmp_path / NNCF_FILE).read_text())["notes"]
    assert len(notes) == 2 and "|x| alone" in notes[0] and "every token" in notes[1]
    with pytest.raises(LookupFileError, match="3 blocks for a model of 4"):
        write_nncf_file(tmp_path, {**lookup, "model": {**lookup["model"], "n_blocks": 4}})
    with pytest.raises(LookupFileError, match="blocks is missing"):
        write_nncf_file(tmp_path, {key: value for key, value in lookup.items() if key != "blocks"})


def test_a_missing_nncf_is_one_sentence(llama_export, tokens, monkeypatch):
    model_dir, out, _ = llama_export
    for name in [name for name in sys.modules if name == "nncf" or name.startswith("nncf.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import nncf...` now raises ImportError
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(NNCFNotInstalledError) as raised:
        sparsify(load_model(model_dir).model, out, tokens["calibration"])
    assert str(raised.value) == "NNCF is not installed; `pip install sparsealloc[nncf]`."


def test_a_lookup_for_another_model_is_refused(nncf, llama_export, tokens, tiny_tokenizer):
    _, out, _ = llama_export
    other = build_tiny_model("llama", len(tiny_tokenizer), seed=1)
    with pytest.raises(LookupFileError, match="made for another model"):
        sparsify(other, out, tokens["calibration"])
    assert not any(name.startswith("__nncf") for name, _ in other.named_modules())  # refused before NNCF ran

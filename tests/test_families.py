"""Every model family a user may bring: reproduced exactly by the hand-written sampler, or refused at load time
in one sentence (sampler.sampler_mismatch). Tiny random models, saved and loaded through sampler.load_model."""

import json

import pytest
import torch

import sampler
import sqlm
from test_train import answers_from_real_samples, fake_proposals
from tiny_model import FAMILIES, SUPPORTED, make_family_checkpoint

REFUSED = [family for family in FAMILIES if family not in SUPPORTED]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict:
    return {family: make_family_checkpoint(tmp_path_factory.mktemp(family), family) for family in FAMILIES}


@pytest.mark.parametrize("family", SUPPORTED)
def test_supported_family_greedy_equals_generate(family_dirs, family):
    model, tokenizer = sampler.load_model(str(family_dirs[family]), torch.device("cpu"))  # passes the self-check
    model.eval()
    prompts = [sampler.chat_prompt_ids(tokenizer, text) for text in ("What is 12 * 34?", "hi", "Solve 2x + 3 = 7.")]
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    ours = sampler.sample(model, prompts, 20, 0.0, stop_ids, tokenizer.pad_token_id)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    theirs = model.generate(**batch, max_new_tokens=20, do_sample=False, eos_token_id=stop_ids,
                            pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    for row, completion in enumerate(ours):
        assert len(set(completion)) > 3  # random weights still give varied tokens: the comparison compares
        assert completion == theirs[row, :len(completion)].tolist()


@pytest.mark.parametrize("family", SUPPORTED)
def test_supported_family_passes_the_check_in_bfloat16(family_dirs, family):
    model, _ = sampler.load_model(str(family_dirs[family]), torch.device("cpu"), torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("family", REFUSED)
def test_unsupported_family_is_refused_in_one_sentence(family_dirs, family):
    with pytest.raises(SystemExit) as error:
        sampler.load_model(str(family_dirs[family]), torch.device("cpu"))
    message = str(error.value)
    model_type = json.loads((family_dirs[family] / "config.json").read_text())["model_type"]
    assert message.startswith("error: ") and f"model_type {model_type!r}" in message and "\n" not in message
    assert "cannot be sampled by sqlm's hand-written decoder" in message


def test_the_check_catches_a_missing_piece(family_dirs, monkeypatch):
    """The bug the check exists for: a decoder that skips Qwen3's query/key norms runs without error but
    samples from another distribution. Hide the norms from the decoder only: the model must be refused."""
    model, tokenizer = sampler.load_model(str(family_dirs["qwen3"]), torch.device("cpu"))
    real = sampler.forward_with_cache

    def without_norms(model_, *args):
        norms = [(layer.self_attn, layer.self_attn.q_norm) for layer in model_.model.layers]
        for attention, _ in norms:
            del attention.q_norm
        try:
            return real(model_, *args)
        finally:
            for attention, norm in norms:
                attention.q_norm = norm

    monkeypatch.setattr(sampler, "forward_with_cache", without_norms)
    assert "differ from the model's own" in sampler.sampler_mismatch(model, tokenizer)


def test_qwen3_prompts_are_non_thinking(family_dirs):
    tokenizer = sampler.load_model(str(family_dirs["qwen3"]), torch.device("cpu"))[1]
    text = tokenizer.decode(sampler.chat_prompt_ids(tokenizer, "What is 2 * 3?"))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_trains_end_to_end(family_dirs, tmp_path, monkeypatch):
    tokenizer = sampler.load_model(str(family_dirs["qwen3"]), torch.device("cpu"))[1]
    fake_proposals(monkeypatch, tokenizer, ["12 * 34", "5 * 6"])  # the solver samples for real
    answers_from_real_samples(monkeypatch, tokenizer)  # ... and its answers differ, so there is something to learn
    out = tmp_path / "run"
    sqlm.main([str(a) for a in ["--model", family_dirs["qwen3"], "--steps", 2, "--out", out, "--device", "cpu",
                                "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8",
                                "--proposer-update-every", "1", "--lr", "1e-3"]])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1] and metrics[0]["optimizer_steps"] > 0
    trained, _ = sampler.load_model(str(out / "checkpoint"), torch.device("cpu"))  # still passes the check
    initial, _ = sampler.load_model(str(family_dirs["qwen3"]), torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters()))

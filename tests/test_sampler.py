"""The hand-written sampler against transformers' generate, and its stopping and padding rules."""

import pytest
import torch

import sampler


def _load(path):
    model, tokenizer = sampler.load_model(str(path), torch.device("cpu"))
    return model.eval(), tokenizer


def _prompts(tokenizer):
    # different lengths, so left padding matters
    messages = ["hi", "What is 12 * 34? Think step by step, then answer.", "x", "Solve 2x + 3 = 7 for x."]
    return [sampler.chat_prompt_ids(tokenizer, m) for m in messages]


def test_greedy_matches_generate_with_left_padding(varied_dir):
    model, tokenizer = _load(varied_dir)
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 1
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    ours = sampler.sample(model, prompts, 24, 0.0, stop_ids, tokenizer.pad_token_id)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=24, do_sample=False, eos_token_id=stop_ids,
                               pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    for row, completion in enumerate(ours):
        assert len(set(completion)) > 3  # the comparison compares something
        assert completion == generated[row, :len(completion)].tolist()
    # and each row alone (no padding at all) gives the same tokens
    for prompt, completion in zip(prompts, ours):
        assert sampler.sample(model, [prompt], 24, 0.0, stop_ids, tokenizer.pad_token_id)[0] == completion


def test_prefill_logits_match_the_model_forward(varied_dir):
    model, tokenizer = _load(varied_dir)
    prompts = _prompts(tokenizer)
    length = max(map(len, prompts))
    ids = torch.zeros((len(prompts), length), dtype=torch.long)
    mask = torch.zeros((len(prompts), length + 4), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.tensor(prompt)
        mask[row, length - len(prompt):length] = True
    positions = (mask[:, :length].long().cumsum(-1) - 1).clamp(min=0)
    cache = sampler.new_kv_cache(model, len(prompts), length + 4)
    slots = torch.arange(length)
    causal = slots[None, :] <= slots[:, None]
    attention_mask = causal & (mask[:, None, None, :length] | torch.eye(length, dtype=torch.bool))
    ours = sampler.forward_with_cache(model, cache, ids, positions, attention_mask, slots)
    for row, prompt in enumerate(prompts):
        expected = model(torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(ours[row], expected, atol=1e-4)


def test_sampling_is_seeded_and_stops_at_eos_per_row(varied_dir):
    model, tokenizer = _load(varied_dir)
    prompts = _prompts(tokenizer) * 4
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    torch.manual_seed(3)
    first = sampler.sample(model, prompts, 40, 1.0, stop_ids, tokenizer.pad_token_id)
    torch.manual_seed(3)
    again = sampler.sample(model, prompts, 40, 1.0, stop_ids, tokenizer.pad_token_id)
    assert first == again
    assert len({tuple(c) for c in first}) > 1  # temperature 1 gives different samples
    for completion in first:
        assert 1 <= len(completion) <= 40
        stops = [i for i, t in enumerate(completion) if t in stop_ids]
        # a row ends at its first stop token (kept), or runs to the budget without one
        assert stops == [len(completion) - 1] or (not stops and len(completion) == 40)


def test_rows_stop_independently(varied_dir):
    model, tokenizer = _load(varied_dir)
    prompts = _prompts(tokenizer)
    greedy = sampler.sample(model, prompts, 24, 0.0, [], tokenizer.pad_token_id)
    # Make row 0's third greedy token a stop token: row 0 stops there, the others carry on unchanged.
    stop = greedy[0][2]
    stopped = sampler.sample(model, prompts, 24, 0.0, [stop], tokenizer.pad_token_id)
    assert stopped[0] == greedy[0][:3]
    for row in range(1, len(prompts)):
        cut = next((i + 1 for i, t in enumerate(greedy[row]) if t == stop), 24)
        assert stopped[row] == greedy[row][:cut]


def test_dropping_finished_rows_changes_no_sample(varied_dir):
    """Compaction only saves compute: the same seed gives the same samples with it on or off."""
    model, tokenizer = _load(varied_dir)
    prompts = _prompts(tokenizer) * 8
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    common = tokenizer("a")["input_ids"][0]  # a frequent token as an extra stop, so rows finish at different steps
    results = []
    for compact in (True, False):
        torch.manual_seed(5)
        results.append(sampler.sample(model, prompts, 48, 1.0, stop_ids + [common], tokenizer.pad_token_id,
                                   compact=compact))
    assert results[0] == results[1]
    lengths = [len(c) for c in results[0]]
    assert min(lengths) < 16 and max(lengths) > 32  # rows did finish at very different times


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoding_matches_eager(varied_dir):
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cuda"))
    model.eval()
    prompts = _prompts(tokenizer) * 4
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    eager = sampler.sample(model, prompts, 300, 0.0, stop_ids, tokenizer.pad_token_id, cuda_graph=False)
    graphed = sampler.sample(model, prompts, 300, 0.0, stop_ids, tokenizer.pad_token_id, cuda_graph=True)
    assert graphed == eager
    cpu = sampler.sample(model.cpu(), prompts, 300, 0.0, stop_ids, tokenizer.pad_token_id)
    assert sum(a == b for a, b in zip(cpu, eager)) >= len(prompts) - 2  # fp32 on two devices: near-identical

"""The GRPO pieces against hand-computed values, and log-probs against transformers' own loss."""

import math

import pytest
import torch
import torch.nn.functional as F

import sampler
import sqlm


def test_group_advantages_hand_computed():
    group_rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    valid = torch.ones_like(group_rewards, dtype=torch.bool)
    advantages = sqlm.group_advantages(group_rewards, valid)
    # group 1: mean 0.25, unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    assert torch.allclose(advantages[0], expected)
    assert torch.equal(advantages[1], torch.zeros(4))  # no variance, no signal


def test_group_advantages_ignore_invalid_members():
    group_rewards = torch.tensor([[1.0, 0.0, 0.0, 5.0]])
    valid = torch.tensor([[True, True, True, False]])
    advantages = sqlm.group_advantages(group_rewards, valid)
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = torch.tensor([(1 - mean) / (std + 1e-6), -mean / (std + 1e-6), -mean / (std + 1e-6), 0.0])
    assert torch.allclose(advantages, expected[None], atol=1e-6)
    # the inputs are not modified in place
    assert torch.equal(group_rewards, torch.tensor([[1.0, 0.0, 0.0, 5.0]]))


def test_grpo_token_loss_hand_computed():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.5, 0.8, 0.2, 0.8]))  # ratios 1.0, 1.6, 0.4, 1.6
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, kl = sqlm.grpo_token_loss(new, old, None, advantages, epsilon=0.2, beta=0.0)
    # min(r*A, clip(r)*A): r=1.6,A=1 -> 1.2 (clipped); r=0.4,A=-1 -> min(-0.4,-0.8) = -0.8; r=1.6,A=-1 -> -1.6
    assert torch.allclose(loss, -torch.tensor([1.0, 1.2, -0.8, -1.6]))
    assert torch.equal(kl, torch.zeros(4))


def test_k3_kl_hand_computed():
    logprobs = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.25]))
    _, kl = sqlm.grpo_token_loss(logprobs, logprobs, ref, torch.zeros(2), epsilon=0.2, beta=0.1)
    # k3 = exp(ref - logp) - (ref - logp) - 1: for 0.25/0.5 -> 0.5 - ln 0.5 - 1
    assert torch.allclose(kl, torch.tensor([0.5 - math.log(0.5) - 1, 0.0]))
    loss, _ = sqlm.grpo_token_loss(logprobs, logprobs, ref, torch.zeros(2), epsilon=0.2, beta=0.1)
    assert torch.allclose(loss, 0.1 * kl)


def test_policy_gradient_sign():
    """Raising the probability of a positive-advantage token must lower the loss."""
    logprobs = torch.tensor([-1.0], requires_grad=True)
    loss, _ = sqlm.grpo_token_loss(logprobs, logprobs.detach(), None, torch.tensor([2.0]), 0.2, 0.0)
    loss.sum().backward()
    assert logprobs.grad.item() == pytest.approx(-2.0)


def _episodes(tokenizer, completions, advantages=None):
    prompt = sampler.chat_prompt_ids(tokenizer, "What is 3 * 4?")
    advantages = advantages or [0.0] * len(completions)
    return [sqlm.Episode(prompt, ids, 0.0, adv) for ids, adv in zip(completions, advantages)]


def test_completion_logprobs_match_cross_entropy(varied_dir):
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    eos = tokenizer.eos_token_id
    completions = [tokenizer("<answer> 12 </answer>")["input_ids"] + [eos], tokenizer("12")["input_ids"] + [eos],
                   [eos]]
    episodes = _episodes(tokenizer, completions)
    temperature = 0.7
    ours = sqlm.completion_logprobs(model, episodes, temperature)
    for episode, logprobs in zip(episodes, ours):
        # The stop token is part of the completion: the model must learn to stop.
        assert logprobs.shape == (len(episode.completion_ids),)
        ids = torch.tensor([episode.prompt_ids + episode.completion_ids])
        logits = model(ids).logits[0, len(episode.prompt_ids) - 1:-1] / temperature
        expected = -F.cross_entropy(logits, torch.tensor(episode.completion_ids), reduction="none")
        assert torch.allclose(logprobs, expected, atol=1e-5)


def test_micro_batches_respect_token_budget():
    episodes = [sqlm.Episode([1] * p, [2] * c, 0.0) for p, c in [(5, 5), (3, 1), (10, 30), (2, 2), (8, 8)]]
    batches = sampler.micro_batches(episodes, 40, lambda e: len(e.prompt_ids) + len(e.completion_ids))
    assert sorted(id(e) for b in batches for e in b) == sorted(id(e) for e in episodes)
    for batch in batches:
        longest = max(len(e.prompt_ids) + len(e.completion_ids) for e in batch)
        assert len(batch) == 1 or len(batch) * longest <= 40


def test_update_is_token_mean_over_the_mini_batch(varied_dir):
    """With beta=0 and ratio 1, the first mini-batch's gradient is -(sum of A_t * grad logp_t) / total tokens,
    however the mini-batch is split into micro-batches."""
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    eos = tokenizer.eos_token_id
    completions = [[5, 6, 7, eos], [8, eos], [9, 10, 11, 12, 13, eos]]
    advantages = [1.0, -0.5, 0.25]
    config = sqlm.Config(beta=0.0, micro_batch_tokens=1, mini_batch_size=8, max_grad_norm=1e9, lr=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sqlm.update_policy(config, model, None, optimizer, _episodes(tokenizer, completions, advantages),
                       torch.device("cpu"))
    ours = model.model.embed_tokens.weight.grad.clone()

    model.zero_grad()
    episodes = _episodes(tokenizer, completions, advantages)
    logprobs = sqlm.completion_logprobs(model, episodes, 1.0)
    total = sum(len(c) for c in completions)
    expected_loss = -sum((lp * a).sum() for lp, a in zip(logprobs, advantages)) / total
    expected_loss.backward()
    assert torch.allclose(ours, model.model.embed_tokens.weight.grad, atol=1e-6)


def test_group_advantages_with_no_or_one_valid_member():
    group_rewards = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    valid = torch.tensor([[False, False, False], [False, True, False]])
    # No valid member: nothing to compare. One: no spread, so no signal either (and no division by zero).
    assert torch.equal(sqlm.group_advantages(group_rewards, valid), torch.zeros(2, 3))


def test_later_mini_batches_see_ratios_away_from_one_and_clip(varied_dir, monkeypatch):
    """One step of sqlm's update is several optimizer steps: after the first, the policy has moved, so the
    ratio to the sampling policy leaves 1 and the clip at 1 +- epsilon starts to act."""
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    eos = tokenizer.eos_token_id
    completions = [[5 + i, 6 + i, 7 + i, eos] for i in range(8)]
    advantages = [1.0, -1.0] * 4
    ratios = []
    real_loss = sqlm.grpo_token_loss

    def recording_loss(logprobs, old_logprobs, *args):
        ratios.append(torch.exp(logprobs - old_logprobs).detach())
        return real_loss(logprobs, old_logprobs, *args)

    monkeypatch.setattr(sqlm, "grpo_token_loss", recording_loss)
    config = sqlm.Config(beta=0.0, mini_batch_size=2, micro_batch_tokens=10_000, lr=0.05, epsilon=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    update = sqlm.update_policy(config, model, None, optimizer, _episodes(tokenizer, completions, advantages),
                                torch.device("cpu"))
    assert update["optimizer_steps"] == 4 and len(ratios) == 4
    assert torch.allclose(ratios[0], torch.ones_like(ratios[0]))  # the first mini-batch: the sampling policy
    later = torch.cat(ratios[1:])
    assert (later - 1).abs().max() > 0.2  # outside the clip range: clipping is active there


def test_the_proposer_gets_mini_batches_of_its_own(varied_dir):
    """--proposer-batches separate (the release): the proposer's episodes are averaged only with each other, in
    mini-batches after the solver's; mixed, they share the solver's mini-batches."""
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    eos = tokenizer.eos_token_id
    solver = _episodes(tokenizer, [[5, 6, 7, 8, 9, 10, eos]] * 4, [1.0, -1.0, 1.0, -1.0])
    proposer = _episodes(tokenizer, [[11, eos]] * 4, [1.0, -1.0, 1.0, -1.0])
    config = sqlm.Config(beta=0.0, mini_batch_size=8, lr=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    device = torch.device("cpu")
    separate = sqlm.update_policy(config, model, None, optimizer, solver, device, then=proposer)
    mixed = sqlm.update_policy(config, model, None, optimizer, solver + proposer, device)
    assert separate["optimizer_steps"] == 2 and mixed["optimizer_steps"] == 1


def test_kl_is_clamped_at_10_in_the_loss_only():
    """k3 >= 0, so only the release's upper bound can act: the loss uses min(k3, 10) (no KL gradient beyond it),
    while the k3 returned (logged as `kl`) is the unclamped one."""
    logprobs = torch.tensor([-20.0, -1.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0])  # the first token drifted far below the reference: k3 = e^19 - 20
    loss, kl = sqlm.grpo_token_loss(logprobs, logprobs.detach(), ref, torch.zeros(2), epsilon=0.2, beta=0.5)
    assert kl[0].item() == pytest.approx(math.exp(19) - 19 - 1, rel=1e-5) and kl[1].item() == 0.0
    assert torch.allclose(loss, torch.tensor([0.5 * 10.0, 0.0]))
    loss.sum().backward()
    assert logprobs.grad.tolist() == [0.0, 0.0]  # clamped token: no pull back; the other: k3' = 0 at ref


@pytest.mark.parametrize("beta, stepped_before, runs", [(0.0, False, False), (0.0, True, False),
                                                         (0.1, False, False), (0.1, True, True)])
def test_an_update_with_nothing_to_learn_is_skipped(varied_dir, beta, stepped_before, runs):
    """Every advantage 0: the surrogate has no gradient. The KL term has one only if there is a reference and the
    policy has already moved away from it (an optimizer step was taken); otherwise the pass is skipped and the
    weights stay exactly as they were (no weight decay either)."""
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    reference = sampler.load_model(str(varied_dir), torch.device("cpu"))[0] if beta else None
    eos = tokenizer.eos_token_id
    config = sqlm.Config(beta=beta, mini_batch_size=8, weight_decay=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    device = torch.device("cpu")
    if stepped_before:  # one real update first: the policy leaves the reference, the optimizer has state
        sqlm.update_policy(config, model, reference, optimizer, _episodes(tokenizer, [[5, 6, eos], [7, eos]],
                                                                          [1.0, -1.0]), device)
    before = [p.detach().clone() for p in model.parameters()]
    result = sqlm.update_policy(config, model, reference, optimizer, _episodes(tokenizer, [[5, 6, eos], [7, eos]]),
                                device)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert result["nothing_to_learn"] is not runs and changed is runs
    assert (result["optimizer_steps"] > 0) is runs and (result["loss"] is None) is not runs

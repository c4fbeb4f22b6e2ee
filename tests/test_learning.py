"""Does the RL update learn at all? A guard against sign and masking bugs in the loss, on a tiny random model.

The reward is simple and verifiable: the share of a completion's tokens whose id is even. A random model
scores about 0.5 with plenty of spread between samples, so every GRPO group has something to compare.
A few dozen steps of rollout -> group_advantages -> update_policy, the same functions sqlm.py runs, must
raise it. A flipped sign lowers it; a broken mask or normaliser leaves it flat.
"""

import random

import torch

import sampler
import sqlm


def even_token_share(completion: list[int], stop_ids: list[int]) -> float:
    tokens = [t for t in completion if t not in stop_ids]
    return sum(t % 2 == 0 for t in tokens) / max(len(tokens), 1)


def test_grpo_raises_a_verifiable_reward(varied_dir):
    random.seed(0)
    torch.manual_seed(0)
    device = torch.device("cpu")
    policy, tokenizer = sampler.load_model(str(varied_dir), device)
    stop_ids = sampler.stop_token_ids(policy, tokenizer)
    config = sqlm.Config(lr=3e-3, beta=0.0, mini_batch_size=64, device="cpu")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    prompts = [sampler.chat_prompt_ids(tokenizer, f"Count to {i}.") for i in range(8)]
    groups, n = len(prompts), 8
    mean_rewards = []
    for _ in range(30):
        policy.eval()
        completions = sampler.sample_in_chunks(policy, [p for p in prompts for _ in range(n)], max_new_tokens=8,
                                            temperature=1.0, stop_ids=stop_ids, pad_id=tokenizer.pad_token_id,
                                            chunk_size=64)
        rewards = torch.tensor([even_token_share(c, stop_ids) for c in completions]).view(groups, n)  # [G, N]
        advantages = sqlm.group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool)).flatten()
        episodes = [sqlm.Episode(prompts[i // n], c, r, a)
                    for i, (c, r, a) in enumerate(zip(completions, rewards.flatten().tolist(), advantages.tolist()))
                    if c]
        policy.train()
        sqlm.update_policy(config, policy, None, optimizer, episodes, device)
        mean_rewards.append(rewards.mean().item())
    first, last = sum(mean_rewards[:5]) / 5, sum(mean_rewards[-5:]) / 5
    assert last > first + 0.15, (first, last)

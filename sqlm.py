"""SQLM: Self-Questioning Language Models (arXiv 2508.03682), on one GPU, in one file.

One chat model plays two roles. From a single topic prompt the *proposer* writes a question; the *solver*
answers it num_generations times. No labels: for math the majority answer stands in for the truth, for code
the proposer's own unit tests judge the solver's program. The proposer is paid for questions that are
neither too easy nor too hard. Both roles are trained with a hand-written GRPO update.

Read top to bottom: config -> load -> sample -> propose -> solve -> score -> advantages -> loss -> step -> main.
    python sqlm.py --task multiplication            # see README.md for every flag
"""

import argparse
import dataclasses
import functools
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import curriculum
import rewards

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
TASKS = ("multiplication", "algebra", "coding")
# Response budgets from the paper's Table 4: arithmetic 1024, algebra 3072, coding 512 tokens.
TASK_MAX_NEW_TOKENS = {"multiplication": 1024, "algebra": 3072, "coding": 512}
TINY_MAX_NEW_TOKENS = 80  # the tiny CPU demo model (tiny.py): its longest solution is 66 tokens


# ============================================================================ config


@dataclass
class Config:
    task: str = "multiplication"  # multiplication | algebra | coding
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"  # hub name or local dir; 'tiny' = the CPU demo model (tiny.py)
    out: str = "runs/sqlm"  # run directory: config.json, metrics.jsonl, samples.jsonl, checkpoint/
    resume: bool = False  # continue the run in --out from its last checkpoint
    steps: int = 100  # training steps (the paper reports the best checkpoint within 100)
    batch_size: int = 64  # topic prompts per step (B); B * num_generations questions per step
    num_generations: int = 4  # samples per prompt for both roles = the GRPO group size (N)
    proposer_update_every: int = 5  # update the proposer every k-th step (0 or 'never' = never); the solver every step
    gate: str = "release"  # proposer reward for math: 'release' pays 1<k<N, 'paper' pays 0<k<N
    solver_reward: str = "majority"  # math: 'majority' (SQLM), 'format' (paper's baseline), 'truth' (uses labels!)
    question_pool: int = 0  # >0: pre-generate this many questions once, train the solver on them only (ablation)
    temperature: float = 1.0  # sampling temperature; log-probs are taken at the same temperature
    max_new_tokens: int = 0  # response budget per completion (0 = the task's default from the paper; 64 for tiny)
    max_prompt_tokens: int = 512  # a question whose solver prompt is longer counts as invalid
    lr: float = 1e-6  # AdamW learning rate (constant)
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    epsilon: float = 0.2  # PPO/GRPO clip range for the probability ratio
    beta: float = 0.001  # weight of the k3 KL penalty to the initial model (0 = no reference model)
    mini_batch_size: int = 128  # sequences per optimizer step (the paper: 32 prompts x 4)
    micro_batch_tokens: int = 4096  # padded tokens per forward/backward pass (memory knob)
    rollout_batch_size: int = 256  # sequences decoded together (KV-cache memory knob)
    cuda_graph: bool = True  # replay decode steps from captured CUDA graphs (--no-cuda-graph: plain eager)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    seed: int = 0  # seeds python, numpy and torch
    device: str = "auto"  # auto | cpu | cuda
    save_every: int = 50  # save a checkpoint every k steps (and always at the end)
    eval_every: int = 0  # score the validation split every k steps, keep checkpoint-best/ (0 = never)
    eval_limit: int = 256  # validation problems used by --eval-every
    samples_per_step: int = 16  # questions per step written to samples.jsonl (0 = all)


def update_period(text: str) -> int:
    """--proposer-update-every: a number of steps, or 'never' (= 0)."""
    return 0 if text == "never" else int(text)


def parse_config(argv: list[str] | None = None) -> Config:
    """Build argparse from the dataclass, so each field is a flag (--num-generations 8, --resume)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = update_period if field.name == "proposer_update_every" else field.type
            parser.add_argument(flag, type=kind, default=field.default)
    config = Config(**vars(parser.parse_args(argv)))
    check_config(config)
    return config


def check_config(config: Config) -> None:
    """Reject flags that cannot work with one clear sentence (no traceback)."""
    problems = []
    if config.task not in TASKS:
        problems.append(f"unknown --task {config.task!r}: choose one of {', '.join(TASKS)}")
    if config.model == "tiny" and config.task != "multiplication":
        problems.append("the tiny demo model (--model tiny) only knows --task multiplication")
    if config.gate not in ("release", "paper"):
        problems.append("--gate must be 'release' (1<k<N) or 'paper' (0<k<N)")
    if config.solver_reward not in ("majority", "format", "truth") or (
            config.solver_reward != "majority" and config.task == "coding"):
        problems.append("--solver-reward must be 'majority', 'format' (math tasks) or 'truth' (multiplication)")
    if config.solver_reward == "truth" and config.task != "multiplication":
        problems.append("--solver-reward truth needs questions that can be checked exactly: --task multiplication")
    if config.proposer_update_every < 0 or config.question_pool < 0:
        problems.append("--proposer-update-every and --question-pool must be >= 0")
    if config.num_generations < 2:
        problems.append("--num-generations must be at least 2: GRPO compares samples within a group")
    if config.batch_size < 1 or config.steps < 1 or config.mini_batch_size < 1:
        problems.append("--batch-size, --steps and --mini-batch-size must be positive")
    if config.temperature <= 0:
        problems.append("--temperature must be > 0 for training (greedy samples give GRPO nothing to compare)")
    if config.device not in ("auto", "cpu", "cuda") or (config.device == "cuda" and not torch.cuda.is_available()):
        problems.append(f"--device {config.device!r} is not available here: use auto, cpu or cuda (with a GPU)")
    if problems:
        raise SystemExit("error: " + "; ".join(problems) + ".")


@functools.cache  # read each prompt file once, not once per question
def read_prompt(name: str) -> str:
    return (PROMPTS_DIR / f"{name}.txt").read_text().strip()


# ============================================================================ load


def load_model(name_or_path: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer from a hub name or a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path == "tiny":  # the CPU demo model: built and cached on first use
        import tiny

        name_or_path = str(tiny.load_or_build_tiny_base())
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise SystemExit(
            f"error: could not load model {name_or_path!r} ({reason}); pass --model a local checkpoint "
            "directory, or a hub name on a machine that can reach the hub."
        ) from None
    if getattr(model.config, "use_sliding_window", False):
        raise SystemExit("error: models with sliding-window attention are not supported by the sampler.")
    return model.to(device), tokenizer


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS (<|im_end|> for Qwen chat) and generation_config's."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def pad_token_id(tokenizer, stop_ids: list[int]) -> int:
    """The id written into padding slots: the tokenizer's pad token, else a stop token (padding is masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def chat_prompt_ids(tokenizer, user_message: str) -> list[int]:
    """One user turn through the model's chat template, ending with the assistant header."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ============================================================================ sample
# A hand-written batched sampler with a KV cache allocated once per batch. Prompts are left-padded so every
# row's next token goes to the same cache slot; position ids come from the attention mask, so padding never
# shifts a row's positions. Finished rows are dropped from the batch as it shrinks, and on CUDA each decode
# step is replayed from a captured CUDA graph (one kernel launch instead of hundreds). Works with any
# Qwen2/Llama-style model from transformers.


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def forward_with_cache(model, cache, input_ids, position_ids, attention_mask, slots) -> torch.Tensor:
    """Run the decoder on input_ids [B, T], storing their keys/values at cache slots `slots` [T].

    attention_mask: [B, 1, T, K] bool, which of the first K cache slots each query may attend to.
    cache: one (keys, values) pair per layer, each [B, kv_heads, max_len, head_dim].
    Returns the next-token logits [B, V] of the last position."""
    core = model.model  # the transformer without the LM head
    batch, length = input_ids.shape
    seen = attention_mask.shape[-1]  # K
    hidden = core.embed_tokens(input_ids)  # [B, T, H]
    cos, sin = core.rotary_emb(hidden, position_ids)  # [B, T, head_dim] each
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, head_dim]: broadcast over heads
    for layer, (keys, values) in zip(core.layers, cache):
        attention = layer.self_attn
        x = layer.input_layernorm(hidden)  # [B, T, H]
        q = attention.q_proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)  # [B, heads, T, D]
        k = attention.k_proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)  # [B, kv_heads, T, D]
        v = attention.v_proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)  # [B, kv_heads, T, D]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # rotary position embedding
        keys.index_copy_(2, slots, k)  # in place: the cache never moves, so a CUDA graph can replay this
        values.index_copy_(2, slots, v)
        # Grouped-query attention: the `group` query heads that share one key/value head become extra query
        # rows of that head, so the cache is read once per kv head instead of being copied `group` times.
        kv_heads = k.shape[1]
        group = q.shape[1] // kv_heads
        q = q.reshape(batch, kv_heads, group * length, -1)  # [B, kv_heads, G*T, D]
        mask = attention_mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(batch, 1, group * length, seen)
        attended = F.scaled_dot_product_attention(
            q, keys[:, :, :seen], values[:, :, :seen], attn_mask=mask, scale=attention.scaling
        )  # [B, kv_heads, G*T, D]
        attended = attended.reshape(batch, kv_heads * group, length, -1)  # [B, heads, T, D]
        hidden = hidden + attention.o_proj(attended.transpose(1, 2).reshape(batch, length, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(core.norm(hidden[:, -1]))  # [B, V]: only the last position predicts the next token


def new_kv_cache(model, batch: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Allocate the whole cache once: no per-token concatenation, no reallocation."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, config.num_key_value_heads, max_len, head_dim)
    like = model.lm_head.weight
    return [(like.new_zeros(shape), like.new_zeros(shape)) for _ in range(config.num_hidden_layers)]


def make_decoder(model, cache, key_is_token, use_cuda_graph: bool, bucket: int = 256):
    """A function (token [B], position [B, 1], slot) -> next logits [B, V] for one decode step.

    Eager: attend to exactly the slots written so far. CUDA graph: attend to the slots rounded up to a
    bucket (the mask hides the rest), so one captured graph per bucket serves every step inside it."""
    if not use_cuda_graph:
        def decode(token, position, slot):
            mask = key_is_token[:, None, None, :slot + 1]  # [B, 1, 1, slot+1]
            slots = torch.tensor([slot], device=token.device)
            return forward_with_cache(model, cache, token[:, None], position, mask, slots)
        return decode

    static_token = torch.zeros_like(key_is_token[:, 0], dtype=torch.long)  # [B]
    static_position = torch.zeros_like(static_token)[:, None]  # [B, 1]
    static_slot = torch.zeros(1, dtype=torch.long, device=key_is_token.device)  # [1]
    graphs = {}  # bucket end -> (graph, its output logits)

    def run(end):
        return forward_with_cache(model, cache, static_token[:, None], static_position,
                                  key_is_token[:, None, None, :end], static_slot)

    def decode(token, position, slot):
        static_token.copy_(token)
        static_position.copy_(position)
        static_slot.fill_(slot)
        end = min(key_is_token.shape[1], (slot // bucket + 1) * bucket)
        if end not in graphs:
            side = torch.cuda.Stream()  # warm up off the main stream, as CUDA graph capture requires
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                run(end)  # writes this step's keys/values: the replay below writes the same again
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = run(end)
            graphs[end] = (graph, logits)
        graph, logits = graphs[end]
        graph.replay()
        return logits

    return decode


def pick_tokens(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids: greedy at temperature 0, else a sample from softmax(logits / T).

    Sampling uses the exponential race (argmax of probs / Exp(1) noise, same distribution as multinomial)
    with noise drawn for the whole original batch, so a row's sample does not depend on which other rows
    are still running."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V] in fp32: bf16 probs are too coarse
    return (probs / noise).argmax(dim=-1)


@torch.no_grad()
def sample(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, stop_ids: list[int],
           pad_id: int = 0, cuda_graph: bool = True, compact: bool = True) -> list[list[int]]:
    """Complete every prompt; each completion keeps the stop token that ended it (if it stopped)."""
    device = model.lm_head.weight.device
    batch, prompt_len = len(prompts), max(len(p) for p in prompts)
    max_len = prompt_len + max_new_tokens
    input_ids = torch.full((batch, prompt_len), pad_id, dtype=torch.long)
    key_is_token = torch.zeros((batch, max_len), dtype=torch.bool)  # [B, max_len]: slot holds a real token
    for row, ids in enumerate(prompts):  # left padding: every prompt ends at slot prompt_len - 1
        input_ids[row, prompt_len - len(ids):] = torch.tensor(ids)
        key_is_token[row, prompt_len - len(ids):prompt_len] = True
    input_ids, key_is_token = input_ids.to(device), key_is_token.to(device)
    positions = (key_is_token[:, :prompt_len].long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
    cache = new_kv_cache(model, batch, max_len)
    stop = torch.tensor(stop_ids, device=device)
    use_graph = cuda_graph and device.type == "cuda"

    # Prefill: all prompt tokens at once. A padding query sees only itself (an all-masked row gives NaN).
    slots = torch.arange(prompt_len, device=device)  # [P]
    causal = slots[None, :] <= slots[:, None]  # [P, P]
    itself = torch.eye(prompt_len, dtype=torch.bool, device=device)  # [P, P]
    mask = causal & (key_is_token[:, None, None, :prompt_len] | itself)  # [B, 1, P, P]
    logits = forward_with_cache(model, cache, input_ids, positions, mask, slots)  # [B, V]

    position = positions[:, -1:] + 1  # [B, 1]
    rows = torch.arange(batch, device=device)  # live row -> original row
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    decode = make_decoder(model, cache, key_is_token, use_graph)
    for step in range(max_new_tokens):
        noise = torch.empty((batch, logits.shape[-1]), device=device).exponential_()[rows] if temperature else None
        token = pick_tokens(logits, temperature, noise)  # [live]
        token = torch.where(finished, pad_id, token)  # finished rows emit padding, dropped below
        tokens[rows, step] = token
        finished |= torch.isin(token, stop)
        if step % 16 == 15 or step == max_new_tokens - 1:  # looking is a GPU->CPU sync: only now and then
            alive = (~finished).nonzero().squeeze(-1)
            if len(alive) == 0 or step == max_new_tokens - 1:
                break
            if compact and len(alive) <= len(rows) // 2:  # finished rows stop costing compute
                keep = alive
                if use_graph:  # round up to a power of two, so few batch shapes need a graph of their own
                    size = 1 << (len(alive) - 1).bit_length()
                    keep = torch.cat([alive, finished.nonzero().squeeze(-1)[:size - len(alive)]])
                rows, token, position, finished = rows[keep], token[keep], position[keep], finished[keep]
                cache = [(k[keep], v[keep]) for k, v in cache]
                key_is_token = key_is_token[keep]
                decode = make_decoder(model, cache, key_is_token, use_graph)
        slot = prompt_len + step
        key_is_token[:, slot] = True
        logits = decode(token, position, slot)
        position = position + 1

    completions = []
    for row in tokens.tolist():  # cut each row after its first stop token
        end = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
        completions.append(row[:end])
    return completions


def sample_in_chunks(model, prompts, max_new_tokens, temperature, stop_ids, pad_id, chunk_size, cuda_graph=True):
    """The KV cache grows with batch x length, so decode at most chunk_size sequences at once."""
    completions = []
    for begin in range(0, len(prompts), chunk_size):
        completions += sample(model, prompts[begin:begin + chunk_size], max_new_tokens, temperature, stop_ids,
                              pad_id, cuda_graph)
    return completions


# ============================================================================ propose / solve / score


@dataclass
class Episode:
    """One sampled completion and what the update needs to know about it (the rollout -> update contract)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    reward: float
    advantage: float = 0.0
    trained: bool = True  # False masks it out of the loss (invalid questions)
    old_logprobs: torch.Tensor | None = None  # [completion tokens], under the sampling policy
    ref_logprobs: torch.Tensor | None = None  # [completion tokens], under the initial model


def response_budget(config: Config) -> int:
    """Max new tokens per completion: --max-new-tokens, else the paper's per-task budget (short for tiny)."""
    if config.max_new_tokens:
        return config.max_new_tokens
    return TINY_MAX_NEW_TOKENS if config.model == "tiny" else TASK_MAX_NEW_TOKENS[config.task]


def parse_proposal(task: str, tokenizer, completion: list[int], stop_ids: list[int]) -> tuple[str, str | None]:
    """(decoded text, question) of one proposal; the question is None if the proposal never finished (no stop
    token: cut off by the length budget) or does not parse."""
    text = tokenizer.decode(completion, skip_special_tokens=True)
    finished = bool(completion) and completion[-1] in stop_ids
    return text, rewards.parse_question(task, text) if finished else None


def solver_prompt(task: str, question: str) -> str:
    if task == "coding":
        return read_prompt("coding_solver").replace("{problem}", question)
    return read_prompt("math_solver").replace("{question}", question)


def score_questions(task: str, proposal_texts: list[str], completion_texts: list[list[str]], gate: str,
                    solver_reward: str = "majority") -> list[dict]:
    """Rewards for each question's N solver completions. Math votes; code runs against the proposer's own
    tests in sandbox.py, all programs of the step in one parallel batch."""
    if task == "coding":
        import sandbox

        tests = [rewards.parse_tests(text) for text in proposal_texts]
        programs = [[rewards.extract_code(text) for text in texts] for texts in completion_texts]
        flat = sandbox.pass_fractions([p for group in programs for p in group],
                                      [tests[q] for q, group in enumerate(programs) for _ in group])
        n = len(programs[0]) if programs else 0
        scored = []
        for q in range(len(programs)):
            fractions = flat[q * n:(q + 1) * n]
            solver_rewards, proposer_reward = rewards.code_rewards(fractions)
            scored.append(dict(pass_fractions=fractions, num_tests=len(tests[q]), solver_rewards=solver_rewards,
                               proposer_reward=proposer_reward))
        return scored
    scored = []
    for question, texts in zip(proposal_texts, completion_texts):
        answers = [rewards.extract_answer(text) for text in texts]
        solver_rewards, proposer_reward = rewards.math_rewards(answers, gate)
        if solver_reward == "format":  # ablation: pay any parseable answer, right or wrong (proposer unchanged)
            solver_rewards = rewards.format_rewards(answers)
        elif solver_reward == "truth":  # diagnostic upper bound that USES LABELS: pay the exactly right answer
            value = curriculum.safe_eval(question)
            solver_rewards = [float(value is not None and a == curriculum.format_answer(value)) for a in answers]
        majority, count = rewards.majority_vote(answers)
        scored.append(dict(answers=answers, solver_rewards=solver_rewards, proposer_reward=proposer_reward,
                           majority=majority, majority_count=count))
    return scored


def group_advantages(rewards_: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """GRPO advantages: (r - group mean) / (group std + 1e-6) over the valid members of each group.

    rewards_, valid: [groups, N]. std is unbiased (torch.std), as in the authors' release (verl).
    Invalid members get advantage 0 and take no part in their group's statistics."""
    count = valid.sum(-1, keepdim=True).clamp(min=1)  # [G, 1]
    mean = (rewards_ * valid).sum(-1, keepdim=True) / count  # [G, 1]
    variance = (((rewards_ - mean) * valid) ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)  # [G, 1]
    advantages = (rewards_ - mean) / (variance.sqrt() + 1e-6)  # [G, N]
    return torch.where(valid, advantages, torch.zeros_like(advantages))


def rollout(config: Config, model, tokenizer, stop_ids: list[int], seen_ngrams: set, step: int = 0,
            pool: list[list[int]] | None = None) -> tuple[list[Episode], list[Episode], list[dict], dict]:
    """Propose questions, solve each num_generations times, score. Returns proposer episodes, solver
    episodes, per-question records (for samples.jsonl) and rollout statistics."""
    n, task = config.num_generations, config.task
    max_new_tokens = response_budget(config)
    sample_args = dict(max_new_tokens=max_new_tokens, temperature=config.temperature, stop_ids=stop_ids,
                       pad_id=pad_token_id(tokenizer, stop_ids), chunk_size=config.rollout_batch_size,
                       cuda_graph=config.cuda_graph)

    # 1. Propose: B copies of the topic prompt, N samples each (one GRPO group per copy).
    topic_ids = chat_prompt_ids(tokenizer, read_prompt(f"{task}_proposer"))
    if pool is None:
        proposals = sample_in_chunks(model, [topic_ids] * (config.batch_size * n), **sample_args)
    else:  # --question-pool ablation: this step's questions are the next slice of the pre-generated pool
        first = step * config.batch_size * n
        proposals = [pool[(first + i) % len(pool)] for i in range(config.batch_size * n)]

    # 2. Parse each proposal into a question; an unparseable, unfinished or over-long one is invalid.
    questions, solver_prompts = [], []
    for completion in proposals:
        text, question = parse_proposal(task, tokenizer, completion, stop_ids)
        prompt_ids = chat_prompt_ids(tokenizer, solver_prompt(task, question)) if question else None
        if prompt_ids is not None and len(prompt_ids) > config.max_prompt_tokens:
            question, prompt_ids = None, None
        questions.append((text, question))
        solver_prompts.append(prompt_ids)

    # 3. Solve: every valid question N times (one GRPO group per question). Invalid ones are never solved.
    valid_rows = [i for i, ids in enumerate(solver_prompts) if ids is not None]
    flat_prompts = [solver_prompts[i] for i in valid_rows for _ in range(n)]
    answers = sample_in_chunks(model, flat_prompts, **sample_args) if flat_prompts else []

    # 4. Score.
    groups = [answers[k * n:(k + 1) * n] for k in range(len(valid_rows))]
    texts = [[tokenizer.decode(c, skip_special_tokens=True) for c in group] for group in groups]
    scores = score_questions(task, [questions[row][0] for row in valid_rows], texts, config.gate, config.solver_reward)
    records, proposer_rewards, solver_episodes = [], [0.0] * len(proposals), []
    for row, group, group_texts, scored in zip(valid_rows, groups, texts, scores):
        proposer_rewards[row] = scored["proposer_reward"]
        for ids, reward in zip(group, scored["solver_rewards"]):
            solver_episodes.append(Episode(solver_prompts[row], ids, reward))
        records.append(dict(question=questions[row][1], proposal=questions[row][0], completions=group_texts,
                            **scored, answer_lengths=[len(c) for c in group]))

    # 5. Advantages per group. Invalid questions are masked out of both losses (the release meant to,
    #    but never applied its mask): their proposal is not trained on, and they have no solver episodes.
    valid = torch.tensor([ids is not None for ids in solver_prompts]).view(-1, n)  # [B, N]
    proposer_advantages = group_advantages(torch.tensor(proposer_rewards).view(-1, n), valid).flatten()
    proposer_episodes = [
        Episode(topic_ids, ids, reward, advantage, trained=ids_valid)
        for ids, reward, advantage, ids_valid in zip(proposals, proposer_rewards, proposer_advantages.tolist(), valid.flatten().tolist())
    ]
    if solver_episodes:
        solver_rewards = torch.tensor([e.reward for e in solver_episodes]).view(-1, n)  # [Q, N]
        solver_advantages = group_advantages(solver_rewards, torch.ones_like(solver_rewards, dtype=torch.bool))
        for episode, advantage in zip(solver_episodes, solver_advantages.flatten().tolist()):
            episode.advantage = advantage

    stats = dict(
        valid_fraction=len(valid_rows) / len(proposals),
        proposer_reward=sum(proposer_rewards) / len(proposer_rewards),
        solver_reward=float(np.mean([e.reward for e in solver_episodes])) if solver_episodes else 0.0,
        proposer_length=float(np.mean([len(c) for c in proposals])),
        solver_length=float(np.mean([len(e.completion_ids) for e in solver_episodes])) if solver_episodes else 0.0,
        proposer_truncated=float(np.mean([not (c and c[-1] in stop_ids) for c in proposals])),
        solver_truncated=float(np.mean([not (c and c[-1] in stop_ids) for c in answers])) if answers else 0.0,
        sampled_tokens=sum(len(c) for c in proposals) + sum(len(c) for c in answers),
    )
    # How strongly the N answers agree: mean share of the majority answer (1.0 = unanimous; math only).
    if task != "coding":
        stats["majority_agreement"] = float(np.mean([r["majority_count"] / n for r in records])) if records else None
    # A lens for the reader, never a reward: band rates, novelty, complexity, and exact truth for arithmetic.
    stats.update(curriculum.step_report(task, records, n, seen_ngrams))
    return proposer_episodes, solver_episodes, records, stats


# ============================================================================ loss


def completion_logprobs(model, episodes: list[Episode], temperature: float) -> list[torch.Tensor]:
    """Log-probabilities of each episode's sampled completion tokens, one [len] tensor per episode.

    Trains on the sampled ids themselves (never re-tokenised text). Only the hidden states that predict a
    completion token go through the LM head, and the log-softmax runs in fp32 at the sampling temperature."""
    device = model.lm_head.weight.device
    length = max(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)
    input_ids = torch.zeros((len(episodes), length), dtype=torch.long)
    attention_mask = torch.zeros((len(episodes), length), dtype=torch.bool)
    completion_mask = torch.zeros((len(episodes), length), dtype=torch.bool)
    for row, e in enumerate(episodes):  # right padding; the stop token stays inside the completion mask
        sequence = e.prompt_ids + e.completion_ids
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        attention_mask[row, :len(sequence)] = True
        completion_mask[row, len(e.prompt_ids):len(sequence)] = True
    input_ids, attention_mask, completion_mask = input_ids.to(device), attention_mask.to(device), completion_mask.to(device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    predicts = completion_mask[:, 1:]  # [B, T-1]: position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][predicts]).float() / temperature  # [tokens, V]
    targets = input_ids[:, 1:][predicts]  # [tokens]
    logprobs = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # [tokens]
    return list(logprobs.split([len(e.completion_ids) for e in episodes]))


def grpo_token_loss(logprobs, old_logprobs, ref_logprobs, advantages, epsilon: float, beta: float):
    """Per-token clipped GRPO surrogate plus beta * k3 KL to the reference. All inputs are [tokens].

    k3 = exp(ref - logp) - (ref - logp) - 1 is an unbiased, always-positive estimate of KL(policy || ref)
    (Schulman's "low_var_kl"; clamped to [-10, 10] like the release, for stability)."""
    ratio = torch.exp(logprobs - old_logprobs)  # [tokens]; 1.0 on the first mini-batch of a step
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    policy_loss = -torch.min(ratio * advantages, clipped * advantages)  # [tokens]
    if ref_logprobs is None:
        return policy_loss, torch.zeros_like(policy_loss)
    log_ratio = ref_logprobs - logprobs
    kl = (torch.exp(log_ratio) - log_ratio - 1).clamp(-10, 10)  # [tokens]
    return policy_loss + beta * kl, kl


def micro_batches(episodes: list[Episode], token_budget: int) -> list[list[Episode]]:
    """Group episodes of similar length so that rows x padded length stays within the token budget."""
    ordered = sorted(episodes, key=lambda e: len(e.prompt_ids) + len(e.completion_ids))
    batches, current = [], []
    for e in ordered:
        length = len(e.prompt_ids) + len(e.completion_ids)  # the longest so far, since sorted
        if current and (len(current) + 1) * length > token_budget:
            batches.append(current)
            current = []
        current.append(e)
    return batches + [current] if current else batches


# ============================================================================ step


def autocast(device: torch.device):
    """bf16 compute on CUDA while the master weights and optimizer state stay fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def score_old_and_reference(config, policy, reference, episodes, device) -> tuple[list, list]:
    """Log-probs under the sampling policy (for the ratio) and the frozen reference (for KL), once per step."""
    old, ref = [None] * len(episodes), [None] * len(episodes)
    index = {id(e): i for i, e in enumerate(episodes)}
    for batch in micro_batches(episodes, config.micro_batch_tokens):
        with autocast(device):
            for i, lp in zip((index[id(e)] for e in batch), completion_logprobs(policy, batch, config.temperature)):
                old[i] = lp
            if reference is not None:
                for i, lp in zip((index[id(e)] for e in batch), completion_logprobs(reference, batch, config.temperature)):
                    ref[i] = lp
    return old, ref


def update_policy(config: Config, policy, reference, optimizer, episodes: list[Episode], device) -> dict:
    """One epoch of GRPO over the episodes: shuffled mini-batches, one optimizer step each.

    The loss is token-mean over each mini-batch: every completion token weighs the same, so long answers are
    not down-weighted per token (the fix GRPO-Zero and Dr. GRPO argue for)."""
    old_logprobs, ref_logprobs = score_old_and_reference(config, policy, reference if config.beta > 0 else None,
                                                         episodes, device)
    for e, old, ref in zip(episodes, old_logprobs, ref_logprobs):
        e.old_logprobs, e.ref_logprobs = old, ref
    order = list(range(len(episodes)))
    random.shuffle(order)
    losses, kls, grad_norms, skipped = [], [], [], 0
    for begin in range(0, len(order), config.mini_batch_size):
        mini_batch = [episodes[i] for i in order[begin:begin + config.mini_batch_size]]
        total_tokens = sum(len(e.completion_ids) for e in mini_batch)
        loss_sum, kl_sum = 0.0, 0.0
        optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches(mini_batch, config.micro_batch_tokens):
            with autocast(device):
                logprobs = torch.cat(completion_logprobs(policy, batch, config.temperature))  # [tokens]
            old = torch.cat([e.old_logprobs for e in batch])  # [tokens]
            ref = torch.cat([e.ref_logprobs for e in batch]) if config.beta > 0 else None
            advantages = torch.cat([torch.full((len(e.completion_ids),), e.advantage, device=device) for e in batch])
            token_loss, kl = grpo_token_loss(logprobs, old, ref, advantages, config.epsilon, config.beta)
            loss = token_loss.sum() / total_tokens  # token-mean over the whole mini-batch
            loss.backward()
            loss_sum += loss.item()
            kl_sum += kl.sum().item() / total_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        if not math.isfinite(loss_sum) or not torch.isfinite(grad_norm):
            skipped += 1  # a NaN/inf loss would poison the weights: skip this step, count it
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.step()
        losses.append(loss_sum)
        kls.append(kl_sum)
        grad_norms.append(grad_norm.item())
    for e in episodes:  # free the stored log-probs
        e.old_logprobs = e.ref_logprobs = None
    return dict(loss=float(np.mean(losses)) if losses else float("nan"), kl=float(np.mean(kls)) if kls else 0.0,
                grad_norm=float(np.mean(grad_norms)) if grad_norms else 0.0, optimizer_steps=len(losses),
                skipped_nonfinite=skipped)


# ============================================================================ checkpoints


def save_checkpoint(directory: Path, policy, tokenizer, optimizer=None, step: int = 0, extra: dict | None = None) -> None:
    """Everything a run needs to resume exactly: weights, optimizer, RNG states, step counter (and `extra`).

    Written to NAME.tmp and then swapped in, so a crash mid-save never loses the previous checkpoint."""
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if optimizer is not None:
        rng = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                   cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        torch.save(dict(step=step, optimizer=optimizer.state_dict(), rng=rng, **(extra or {})), tmp / "trainer_state.pt")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out: Path) -> Path | None:
    for candidate in (out / "checkpoint", out / "checkpoint.old"):  # .old survives a crash mid-swap
        if (candidate / "trainer_state.pt").exists():
            return candidate
    return None


def restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def prepare_run_dir(config: Config) -> tuple[Path, Path | None]:
    """Create --out (or find the checkpoint to resume from); refuse to silently overwrite a run."""
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"error: cannot write to --out {str(out)!r} ({error.strerror}); choose a writable directory.")
    checkpoint = find_checkpoint(out)
    if config.resume and checkpoint is None:
        raise SystemExit(f"error: --resume found no checkpoint in {str(out)!r}; drop --resume to start a new run.")
    if not config.resume and (out / "metrics.jsonl").exists():
        raise SystemExit(f"error: {str(out)!r} already holds a run; pass --resume to continue it or choose another --out.")
    return out, checkpoint if config.resume else None


def truncate_jsonl(path: Path, keep_before_step: int) -> None:
    """On resume, drop log lines from steps after the checkpoint: they will be produced again."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] < keep_before_step]
        path.write_text("".join(line + "\n" for line in kept))


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("a") as file:  # appended and flushed every step, so a crash loses at most one step
        for row in rows:
            file.write(json.dumps(row) + "\n")


# ============================================================================ main


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_question_pool(config: Config, model, tokenizer, stop_ids: list[int], path: Path) -> list[list[int]]:
    """--question-pool ablation (the paper's "pre-generate all problems up front"): ask the untrained proposer
    once for config.question_pool proposals and keep those that parse. Saved to `path`, so a resumed run
    reuses the same pool and a reader can look at it."""
    if path.exists():
        return json.loads(path.read_text())["proposal_ids"]
    topic_ids = chat_prompt_ids(tokenizer, read_prompt(f"{config.task}_proposer"))
    proposals = sample_in_chunks(model, [topic_ids] * config.question_pool, response_budget(config), config.temperature,
                                 stop_ids, pad_token_id(tokenizer, stop_ids), config.rollout_batch_size,
                                 config.cuda_graph)
    parsed = [parse_proposal(config.task, tokenizer, ids, stop_ids) for ids in proposals]  # (text, question)
    keep = [i for i, (_, question) in enumerate(parsed) if question]
    if not keep:
        raise SystemExit(f"error: none of the {config.question_pool} pre-generated proposals parsed as a question; "
                         "the model cannot propose for this task.")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(questions=[parsed[i][0] for i in keep], proposal_ids=[proposals[i] for i in keep])))
    tmp.replace(path)
    return [proposals[i] for i in keep]


def sync_weights(source, target) -> None:
    """Copy the fp32 master weights into the bf16 sampling copy after each update."""
    with torch.no_grad():
        for target_param, source_param in zip(target.parameters(), source.parameters()):
            target_param.copy_(source_param)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    out, checkpoint = prepare_run_dir(config)
    device = resolve_device(config.device)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # The policy keeps fp32 master weights (bf16 Adam at lr 1e-6 would round most updates away). On CUDA it
    # samples from a bf16 copy (half the memory traffic per token) and the reference is a frozen bf16 copy of
    # the initial model; on CPU everything is fp32 and the policy samples itself.
    policy, tokenizer = load_model(str(checkpoint) if checkpoint else config.model, device)
    low_precision = torch.bfloat16 if device.type == "cuda" else torch.float32
    reference = load_model(config.model, device, low_precision)[0].eval() if config.beta > 0 else None
    sampler = policy
    if device.type == "cuda":
        sampler = load_model(str(checkpoint) if checkpoint else config.model, device, low_precision)[0].eval()
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    policy.config.use_cache = False
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    stop_ids = stop_token_ids(policy, tokenizer)

    start_step, seen_ngrams, best_validation = 0, set(), -1.0
    if checkpoint:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        start_step, seen_ngrams, best_validation = state["step"], state["seen_ngrams"], state["best_validation"]
        truncate_jsonl(out / "metrics.jsonl", start_step)
        truncate_jsonl(out / "samples.jsonl", start_step)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    validate = None
    if config.eval_every:
        import evaluate  # imported here: evaluate.py itself builds on this file

        # A validation split from another seed, minus any test problem: picking the best checkpoint never
        # looks at the test set that evaluate.py reports.
        problems = evaluate.validation_problems(config.task, config.eval_limit, tiny=config.model == "tiny")
        validate = lambda: evaluate.score(sampler, tokenizer, config.task, problems, stop_ids,
                                          response_budget(config))["accuracy"]
    initial_validation = validate() if validate and start_step == 0 else None
    pool = None  # --question-pool ablation: every question is asked for once, here, before training
    if config.question_pool:
        pool = build_question_pool(config, sampler, tokenizer, stop_ids, out / "question_pool.json")

    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc=config.task)
    for step in progress:
        started = time.time()
        policy.eval()
        proposer_episodes, solver_episodes, records, stats = rollout(config, sampler, tokenizer, stop_ids, seen_ngrams,
                                                                     step, pool)
        rollout_seconds = time.time() - started
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand the KV cache back before the update needs the memory

        # The solver learns every step; the proposer only every k-th step, from this step's samples (never when
        # questions come from a pre-generated pool: there is no proposer in the loop then).
        update_proposer = pool is None and config.proposer_update_every > 0 and step % config.proposer_update_every == 0
        episodes = solver_episodes + ([e for e in proposer_episodes if e.trained] if update_proposer else [])
        policy.train()
        update = dict(loss=None, kl=None, grad_norm=None, optimizer_steps=0, skipped_nonfinite=0)  # nothing to learn
        if episodes:
            update = update_policy(config, policy, reference, optimizer, episodes, device)
        if sampler is not policy:
            sync_weights(policy, sampler)

        seconds = time.time() - started
        metrics = dict(step=step, **stats, **update, proposer_updated=update_proposer, seconds=seconds,
                       rollout_seconds=rollout_seconds, tokens_per_s=stats["sampled_tokens"] / rollout_seconds)
        if step == 0 and initial_validation is not None:
            metrics["validation_accuracy_initial"] = initial_validation  # before any update
        last = step + 1 == config.steps
        if validate and ((step + 1) % config.eval_every == 0 or last):
            metrics["validation_accuracy"] = validate()  # after this step's update
            if metrics["validation_accuracy"] > best_validation:  # keep the best weights, chosen on validation
                best_validation = metrics["validation_accuracy"]
                save_checkpoint(out / "checkpoint-best", policy, tokenizer)
        keep = records if config.samples_per_step == 0 else records[:config.samples_per_step]
        append_jsonl(out / "samples.jsonl", [dict(step=step, **record) for record in keep])
        append_jsonl(out / "metrics.jsonl", [metrics])
        progress.set_postfix(proposer=f"{stats['proposer_reward']:.2f}", solver=f"{stats['solver_reward']:.2f}",
                             valid=f"{stats['valid_fraction']:.2f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % config.save_every == 0 or last:
            save_checkpoint(out / "checkpoint", policy, tokenizer, optimizer, step + 1,
                            dict(seen_ngrams=seen_ngrams, best_validation=best_validation))
    print(json.dumps({"out": str(out), "steps": config.steps, "checkpoint": str(out / "checkpoint")}))


if __name__ == "__main__":
    main()

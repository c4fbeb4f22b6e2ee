"""SQLM, Self-Questioning Language Models (arXiv 2508.03682): the whole algorithm, on one page.

One chat model plays two roles. From a single topic prompt the *proposer* writes a question; the *solver*
answers it num_generations times. No labels: for math the majority answer stands in for the truth, for code
the proposer's own unit tests judge the solver's program. The proposer is paid for questions that are
neither too easy nor too hard. Both roles are trained with a hand-written GRPO update.

Read it top to bottom, in the order a step happens, numbered as the README's walkthrough: config, 1 propose,
2 parse, 3 solve, 4 score, 5 advantages (rollout: 1-5), 6 log-probs, 7 loss, 8 update, 9 train_step, 10 main.

    python sqlm.py --task multiplication        # python sqlm.py --help explains every flag
"""

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import curriculum
import evaluate
import flags
import rewards
import rundir
import sampler
import sandbox
import tasks
from flags import option  # a dataclass field plus what --help shows of it: meaning, default, choices, range

# ============================================================================ config
@dataclasses.dataclass
class Config:
    task: str = option("multiplication", "the self-play task", choices=tasks.TASKS)
    model: str = option("Qwen/Qwen2.5-0.5B-Instruct", "hub name or local directory; also the frozen KL reference")
    out: str = option("runs/sqlm", "run directory: config.json, metrics.jsonl, samples.jsonl, checkpoint/")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")
    steps: int = option(100, "training steps (the paper: best checkpoint within 100)", minimum=1)
    batch_size: int = option(64, "topic prompts per step (B): B x num_generations questions a step", minimum=1)
    num_generations: int = option(4, "samples per prompt for both roles: the GRPO group size (N)", minimum=2)
    proposer_update_every: int = option(5, "train the proposer on steps where step % k == 0 (the solver trains "
                                        "every step); 0 or 'never' = frozen", minimum=0, parse=flags.steps_or_never)
    proposer_batches: str = option("separate", "the proposer's episodes in mini-batches of their own after the "
                                   "solver's (the release), or mixed into them", choices=("separate", "mixed"))
    gate: str = option("release", "math proposer reward: 'release' pays 1<k<N, 'paper' pays 0<k<N (k = count of "
                       "the majority answer)", choices=("release", "paper"))
    proposer_min_majority: int = option(0, "math: pay the proposer only if also k >= K: questions whose vote can "
                                        "still teach; 0 = off", minimum=0)
    solver_min_majority: int = option(0, "math: answers to a question with k < K get no loss (R-Zero's consistency "
                                      "filter): a weak vote never becomes a target; 0 = off", minimum=0)
    solver_reward: str = option("majority", "math solver reward: 'majority' (SQLM), 'format' (any parseable answer: "
                                "the paper's baseline), 'truth' (exactly right: USES LABELS, a diagnostic, "
                                "multiplication only)", choices=("majority", "format", "truth"))
    question_pool: int = option(0, "if > 0: train the solver only on this many questions asked up front", minimum=0)
    temperature: float = option(1.0, "sampling temperature; log-probs are taken at the same one", positive=True)
    max_new_tokens: int = option(0, "response budget; 0 = the model's generation_config.max_new_tokens, else the "
                                 "paper's (1024 multiplication, 3072 algebra, 512 coding)", minimum=0, maximum=2**17)
    max_prompt_tokens: int = option(512, "a question whose solver prompt is longer than this is invalid", minimum=1)
    lr: float = option(1e-6, "AdamW learning rate (constant)", positive=True)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this", positive=True)
    epsilon: float = option(0.2, "clip range of the probability ratio (PPO/GRPO)", positive=True)
    beta: float = option(0.001, "weight of the k3 KL penalty to the initial model (0 = no reference)", minimum=0)
    mini_batch_size: int = option(128, "sequences per optimizer step (the paper: 32 prompts x 4)", minimum=1)
    micro_batch_tokens: int = option(4096, "padded tokens per forward/backward pass (memory)", minimum=1)
    rollout_batch_size: int = option(256, "sequences decoded together (KV-cache memory)", minimum=1)
    cuda_graph: bool = option(True, "replay decode steps from CUDA graphs (off: plain eager code)")
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, slower")
    seed: int = option(0, "seeds python, numpy and torch", minimum=0, maximum=2**32 - 1)  # numpy's range
    device: str = option("auto", "auto = cuda if there is a GPU", choices=("auto", "cpu", "cuda"))
    save_every: int = option(50, "checkpoint every k steps (and at the end, and on Ctrl-C)", minimum=1)
    eval_every: int = option(0, "score the validation set every k steps, keep checkpoint-best/ (0 = never)", minimum=0)
    eval_limit: int = option(256, "validation problems used by --eval-every", minimum=1)
    validation_data: str = option("", "JSON-lines validation problems (empty: generated, none from the test set)")
    samples_per_step: int = option(16, "questions a step logged to samples.jsonl (0 = all)", minimum=0)


# Flags that may change on --resume: they set how long, how fast or how verbosely a run goes, not what it learns.
RESUMABLE = {"out", "resume", "steps", "micro_batch_tokens", "rollout_batch_size", "cuda_graph",
             "gradient_checkpointing", "device", "save_every", "eval_every", "samples_per_step"}


def parse_config(argv: list[str] | None = None) -> Config:
    """Command line -> Config, refusing flags that cannot work before any work starts, in one sentence."""
    resumable = ", ".join(sorted("--" + name.replace("_", "-") for name in RESUMABLE))
    config = flags.parse(Config, argv, __doc__.split("\n\n")[0], f"On --resume only these may change: {resumable}.")
    problems = []
    if config.solver_reward == "truth" and config.task != "multiplication":
        problems.append("--solver-reward truth needs questions that can be checked exactly: --task multiplication")
    if config.solver_reward == "format" and config.task == "coding":
        problems.append("--solver-reward format needs math answers: --task multiplication or algebra")
    if config.task == "coding" and config.proposer_min_majority + config.solver_min_majority or \
            max(config.proposer_min_majority, config.solver_min_majority) > config.num_generations:
        problems.append("--proposer-min-majority and --solver-min-majority count votes: a math task, at most N")
    if config.validation_data and not config.eval_every:
        problems.append("--validation-data is only read with --eval-every > 0")
    if problems:
        raise SystemExit("error: " + "; ".join(problems) + ".")
    return config


# ============================================================================ 1. propose
@dataclasses.dataclass
class Episode:
    """One sampled completion and what the update needs to know about it (the rollout -> update contract)."""
    prompt_ids: list[int]
    completion_ids: list[int]
    reward: float
    advantage: float = 0.0
    in_loss: bool = True  # False: update_policy skips it (an invalid question's proposal; a weakly voted answer)

def sample_completions(config: Config, model, tokenizer, stop_ids: list[int], prompts: list[list[int]]) -> list:
    """One completion per prompt (token ids, ending in the stop token if it stopped), at the run's temperature."""
    budget = tasks.max_new_tokens(config.task, model, config.max_new_tokens)
    return sampler.sample_in_chunks(model, prompts, budget, config.temperature, stop_ids,
                                    sampler.pad_token_id(tokenizer, stop_ids), config.rollout_batch_size,
                                    config.cuda_graph)


def propose(config: Config, model, tokenizer, stop_ids, step: int, pool: list | None) -> tuple[list[int], list]:
    """(topic prompt ids, B * N proposals): N proposals for each of B copies of the topic prompt, one GRPO group
    per copy. With a pre-generated pool (--question-pool) the step's proposals are the next slice of it."""
    topic_ids = sampler.chat_prompt_ids(tokenizer, tasks.read_prompt(f"{config.task}_proposer"))
    count = config.batch_size * config.num_generations
    if pool is None:
        return topic_ids, sample_completions(config, model, tokenizer, stop_ids, [topic_ids] * count)
    return topic_ids, [pool[(step * count + i) % len(pool)] for i in range(count)]


# ============================================================================ 2. parse
def parse_proposal(task: str, tokenizer, completion: list[int], stop_ids: list[int]) -> tuple[str, str | None]:
    """(decoded text, question) of one proposal; the question is None if the proposal never finished (no stop
    token: cut off by the length budget) or does not parse."""
    text = tokenizer.decode(completion, skip_special_tokens=True)
    finished = bool(completion) and completion[-1] in stop_ids
    return text, rewards.parse_question(task, text) if finished else None


# ============================================================================ 3. solve
def solve(config: Config, model, tokenizer, stop_ids: list[int], questions) -> tuple[list, list[list]]:
    """(solver prompt ids per question, N answers per question). A question that is invalid, or whose solver
    prompt is longer than --max-prompt-tokens (it becomes invalid too), gets prompt None and is never solved."""
    system = tasks.solver_system(config.task)  # coding only: the release's system turn
    prompts = [sampler.chat_prompt_ids(tokenizer, tasks.solver_prompt(config.task, q), system) if q else None
               for q in questions]
    prompts = [ids if ids is not None and len(ids) <= config.max_prompt_tokens else None for ids in prompts]
    n, asked = config.num_generations, [ids for ids in prompts if ids is not None]
    answers = sample_completions(config, model, tokenizer, stop_ids, [ids for ids in asked for _ in range(n)])
    return prompts, [answers[k * n:(k + 1) * n] for k in range(len(asked))]


# ============================================================================ 4. score
def score_questions(task: str, proposal_texts: list[str], completion_texts: list[list[str]], gate: str,
                    solver_reward: str = "majority", min_majority: int = 0) -> list[dict]:
    """Rewards for each question's N solver completions. Math votes; code runs against the proposer's own tests
    in sandbox.py, every program of the step in one parallel batch."""
    scored = []
    if task == "coding":
        tests = [rewards.parse_tests(text) for text in proposal_texts]
        n = len(completion_texts[0]) if completion_texts else 0
        passed = sandbox.pass_fractions([rewards.extract_code(text) for texts in completion_texts for text in texts],
                                        [question_tests for question_tests in tests for _ in range(n)])  # [Q * N]
        for q, question_tests in enumerate(tests):
            solver_rewards, proposer_reward = rewards.code_rewards(passed[q * n:(q + 1) * n])
            scored.append(dict(pass_fractions=passed[q * n:(q + 1) * n], num_tests=len(question_tests),
                               solver_rewards=solver_rewards, proposer_reward=proposer_reward))
        return scored
    for proposal, texts in zip(proposal_texts, completion_texts):
        answers = [rewards.extract_answer(text) for text in texts]
        solver_rewards, proposer_reward = rewards.math_rewards(answers, gate, min_majority)
        # The exact value of an arithmetic question: logged for the reader, a reward only under 'truth'.
        value = curriculum.safe_eval(proposal) if task == "multiplication" else None
        truth = rewards.canonical_number(value) if value is not None else None
        if solver_reward == "format":  # ablation: pay any parseable answer, right or wrong (proposer unchanged)
            solver_rewards = rewards.format_rewards(answers)
        elif solver_reward == "truth":  # diagnostic upper bound that USES LABELS: pay the exactly right answer
            solver_rewards = [float(truth is not None and answer == truth) for answer in answers]
        majority, count = rewards.majority_vote(answers)
        scored.append(dict(answers=answers, solver_rewards=solver_rewards, proposer_reward=proposer_reward,
                           majority=majority, majority_count=count, truth=truth))
    return scored


# ============================================================================ 5. advantages
def group_advantages(group_rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """GRPO advantages: (r - group mean) / (group std + 1e-6) over the valid members of each group.
    group_rewards, valid: [groups, N]. std is unbiased (torch.std), as in the authors' release (verl).
    Invalid members get advantage 0 and take no part in their group's statistics."""
    count = valid.sum(-1, keepdim=True).clamp(min=1)  # [G, 1]
    mean = (group_rewards * valid).sum(-1, keepdim=True) / count  # [G, 1]
    variance = (((group_rewards - mean) * valid) ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)  # [G, 1]
    advantages = (group_rewards - mean) / (variance.sqrt() + 1e-6)  # [G, N]
    return torch.where(valid, advantages, torch.zeros_like(advantages))


# ============================================================================ 1-5 together: the rollout
def rollout(config: Config, model, tokenizer, stop_ids: list[int], seen_ngrams: set, step: int = 0,
            pool: list[list[int]] | None = None) -> tuple[list[Episode], list[Episode], list[dict], dict]:
    """Steps 1-5: propose, parse, solve, score, advantages -> (proposer episodes, solver episodes, one record per
    valid question for samples.jsonl, statistics for metrics.jsonl). seen_ngrams: earlier steps' (read only)."""
    n, task = config.num_generations, config.task

    # 1-2. Propose, and parse each proposal into a question: unfinished or unparseable ones are invalid.
    topic_ids, proposals = propose(config, model, tokenizer, stop_ids, step, pool)
    texts, questions = zip(*(parse_proposal(task, tokenizer, ids, stop_ids) for ids in proposals))

    # 3. Solve: every valid question N times, one GRPO group per question.
    prompts, groups = solve(config, model, tokenizer, stop_ids, questions)
    valid_rows = [row for row, ids in enumerate(prompts) if ids is not None]
    answer_texts = [[tokenizer.decode(ids, skip_special_tokens=True) for ids in group] for group in groups]

    # 4. Score.
    scores = score_questions(task, [texts[row] for row in valid_rows], answer_texts, config.gate, config.solver_reward,
                             config.proposer_min_majority)
    proposer_rewards, solver_episodes, records = [0.0] * len(proposals), [], []
    for row, group, group_texts, scored in zip(valid_rows, groups, answer_texts, scores):
        proposer_rewards[row] = scored["proposer_reward"]
        # --solver-min-majority: answers to a weakly voted question stay out of the loss (math only: K is 0 for code).
        strong = scored.get("majority_count", 0) >= config.solver_min_majority
        solver_episodes += [Episode(prompts[row], ids, reward, in_loss=strong)
                            for ids, reward in zip(group, scored["solver_rewards"])]
        records.append(dict(question=questions[row], proposal=texts[row], completions=group_texts, **scored,
                            answer_lengths=[len(ids) for ids in group]))

    # 5. Advantages, per group. Invalid questions are masked out of both losses (the release meant to, but never
    #    applied its mask): their proposal is not trained on, and they have no solver episodes.
    valid = torch.tensor([ids is not None for ids in prompts]).view(-1, n)  # [B, N]
    proposer_advantages = group_advantages(torch.tensor(proposer_rewards).view(-1, n), valid)  # [B, N]
    proposer_episodes = [Episode(topic_ids, ids, r, a, in_loss=ok) for ids, r, a, ok in zip(
        proposals, proposer_rewards, proposer_advantages.flatten().tolist(), valid.flatten().tolist())]
    solver_rewards = torch.tensor([e.reward for e in solver_episodes]).view(-1, n)  # [Q, N]
    solver_advantages = group_advantages(solver_rewards, torch.ones_like(solver_rewards, dtype=torch.bool))  # [Q, N]
    for episode, advantage in zip(solver_episodes, solver_advantages.flatten().tolist()):
        episode.advantage = advantage

    # *_with_signal: share of groups whose rewards differ (a non-zero advantage). None: nothing to measure.
    mean = lambda values: float(np.mean(values)) if len(values) else None  # noqa: E731
    stats = dict(valid_fraction=len(valid_rows) / len(proposals), proposer_reward=mean(proposer_rewards),
                 solver_reward=mean([e.reward for e in solver_episodes]),
                 proposer_groups_with_signal=mean((proposer_advantages != 0).any(-1).tolist()),
                 solver_groups_with_signal=mean((solver_advantages != 0).any(-1).tolist()),
                 solver_questions_trained=mean([e.in_loss for e in solver_episodes]))
    # A lens for the reader, never a reward: lengths, bands, novelty, question size, the vote checked against truth.
    stats.update(curriculum.step_report(task, records, n, seen_ngrams, proposals,
                                        [ids for group in groups for ids in group], stop_ids))
    return proposer_episodes, solver_episodes, records, stats


# ============================================================================ 6. log-probs
def completion_logprobs(model, episodes: list[Episode], temperature: float) -> list[torch.Tensor]:
    """Log-probabilities of each episode's sampled completion tokens, one [len] tensor per episode.
    Trains on the sampled ids themselves (never re-tokenised text). Only the hidden states that predict a
    completion token go through the LM head, and the log-softmax runs in fp32 at the sampling temperature."""
    device = model.lm_head.weight.device
    length = max(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)
    input_ids = torch.zeros((len(episodes), length), dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(episodes), length), dtype=torch.bool)  # [B, T]
    completion_mask = torch.zeros((len(episodes), length), dtype=torch.bool)  # [B, T]
    for row, e in enumerate(episodes):  # right padding; the stop token stays inside the completion mask
        sequence = e.prompt_ids + e.completion_ids
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        attention_mask[row, :len(sequence)] = True
        completion_mask[row, len(e.prompt_ids):len(sequence)] = True
    input_ids, attention_mask, completion_mask = (t.to(device) for t in (input_ids, attention_mask, completion_mask))
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    predicts = completion_mask[:, 1:]  # [B, T-1]: position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][predicts]).float() / temperature  # [tokens, V]
    targets = input_ids[:, 1:][predicts]  # [tokens]
    logprobs = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # [tokens]
    return list(logprobs.split([len(e.completion_ids) for e in episodes]))


# ============================================================================ 7. loss
def grpo_token_loss(logprobs, old_logprobs, ref_logprobs, advantages, epsilon: float, beta: float):
    """Per-token clipped GRPO surrogate plus beta * k3 KL to the reference -> (loss, k3). All are [tokens].
    k3 = exp(ref - logp) - (ref - logp) - 1 is Schulman's non-negative, unbiased estimate of KL(policy || ref)
    (verl calls it "low_var_kl"). The loss clamps it at 10 as the release does ([-10, 10] there; k3 >= 0, so only
    the upper bound can act): on a token that has drifted that far the KL term stops pulling it back. The k3
    returned, and logged as `kl`, is the unclamped one."""
    ratio = torch.exp(logprobs - old_logprobs)  # [tokens]; ~1.0 on a step's first mini-batch (same weights)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    policy_loss = -torch.min(ratio * advantages, clipped * advantages)  # [tokens]
    if ref_logprobs is None:
        return policy_loss, torch.zeros_like(policy_loss)
    log_ratio = ref_logprobs - logprobs
    k3 = torch.exp(log_ratio) - log_ratio - 1  # [tokens]
    return policy_loss + beta * k3.clamp(max=10), k3


# ============================================================================ 8. update
def update_policy(config: Config, policy, reference, optimizer, episodes: list[Episode], device,
                  then: list[Episode] = ()) -> dict:
    """One epoch of GRPO over the episodes in the loss (in_loss), then over `then`'s: shuffled mini-batches, one
    optimizer step each; the loss is the token mean over a mini-batch (GRPO-Zero's choice, after DAPO). The
    proposer's episodes come `then`, in mini-batches of their own, as in the release. Old log-probs are recomputed
    by the policy itself. No pass (`nothing_to_learn`) when every advantage is 0 and the KL term is 0 too (no
    reference, or no optimizer step yet): the gradient would be exactly 0, the step only weight decay."""
    episodes, then = [e for e in episodes if e.in_loss], [e for e in then if e.in_loss]
    length = lambda e: len(e.prompt_ids) + len(e.completion_ids)  # noqa: E731  (micro-batches by padded tokens)
    kl_can_act = reference is not None and config.beta > 0 and bool(optimizer.state)
    if not any(e.advantage != 0 for e in episodes + then) and not (kl_can_act and episodes + then):
        return dict(loss=None, kl=None, grad_norm=None, optimizer_steps=0, skipped_nonfinite=0, nothing_to_learn=True)
    # bf16 compute on CUDA while the master weights and optimizer state stay fp32.
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")  # noqa: E731
    old, ref = {}, {}  # log-probs under the sampling policy (for the ratio) and the reference (for KL), by episode
    with torch.no_grad(), autocast():
        for batch in sampler.micro_batches(episodes + then, config.micro_batch_tokens, length):
            old.update(zip(map(id, batch), completion_logprobs(policy, batch, config.temperature)))
            if reference is not None and config.beta > 0:
                ref.update(zip(map(id, batch), completion_logprobs(reference, batch, config.temperature)))
    mini_batches = []
    for part in (episodes, then):
        order = list(range(len(part)))
        random.shuffle(order)
        mini_batches += [[part[i] for i in order[begin:begin + config.mini_batch_size]]
                         for begin in range(0, len(order), config.mini_batch_size)]
    done, skipped = [], 0  # (loss, kl, grad norm) of each optimizer step taken; steps skipped
    for mini_batch in mini_batches:
        total_tokens = sum(len(e.completion_ids) for e in mini_batch)
        loss_sum, kl_sum = 0.0, 0.0
        optimizer.zero_grad(set_to_none=True)
        for batch in sampler.micro_batches(mini_batch, config.micro_batch_tokens, length):
            with autocast():
                logprobs = torch.cat(completion_logprobs(policy, batch, config.temperature))  # [tokens]
            old_logprobs = torch.cat([old[id(e)] for e in batch])  # [tokens]
            ref_logprobs = torch.cat([ref[id(e)] for e in batch]) if ref else None  # [tokens]
            advantages = torch.cat([torch.full((len(e.completion_ids),), e.advantage, device=device)
                                    for e in batch])  # [tokens]
            token_loss, kl = grpo_token_loss(logprobs, old_logprobs, ref_logprobs, advantages, config.epsilon,
                                             config.beta)
            loss = token_loss.sum() / total_tokens  # token-mean over the whole mini-batch
            loss.backward()
            loss_sum += loss.item()
            kl_sum += kl.sum().item() / total_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        if not math.isfinite(loss_sum) or not torch.isfinite(grad_norm):
            skipped += 1  # a NaN/inf loss or gradient would poison the weights: skip this optimizer step, count it
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.step()
        done.append((loss_sum, kl_sum, grad_norm.item()))
    loss, kl, grad_norm = (float(np.mean(column)) for column in zip(*done)) if done else (None, None, None)
    return dict(loss=loss, kl=kl, grad_norm=grad_norm, optimizer_steps=len(done), skipped_nonfinite=skipped,
                nothing_to_learn=False)


# ============================================================================ 9. one training step
def train_step(config: Config, step: int, policy, sampling, reference, optimizer, tokenizer, stop_ids: list[int],
               seen_ngrams: set, pool: list | None, device) -> tuple[list[dict], dict]:
    """One step of SQLM -> (records for samples.jsonl, metrics for metrics.jsonl): the rollout (steps 1-5), which
    episodes train this step, the update (6-8), and the new weights copied into the sampling model."""
    started = time.time()
    proposer_episodes, solver_episodes, records, stats = rollout(config, sampling, tokenizer, stop_ids, seen_ngrams,
                                                                 step, pool)
    rollout_seconds = time.time() - started
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the KV cache back before the update needs the memory
    # The solver learns every step; the proposer only every k-th step, from this step's own proposals (never with
    # a pre-generated pool: there is no proposer in the loop then). update_policy skips episodes not in_loss.
    update_proposer = pool is None and config.proposer_update_every > 0 and step % config.proposer_update_every == 0
    proposals = proposer_episodes if update_proposer else []
    mixed, then = (proposals, []) if config.proposer_batches == "mixed" else ([], proposals)
    policy.train()
    update = update_policy(config, policy, reference, optimizer, solver_episodes + mixed, device, then)
    if sampling is not policy:
        sampler.copy_weights(policy, sampling)
    return records, dict(step=step, **stats, **update, proposer_updated=update_proposer,
                         proposer_episodes_trained=sum(e.in_loss for e in proposals),
                         solver_episodes_trained=sum(e.in_loss for e in solver_episodes),
                         seconds=time.time() - started, rollout_seconds=rollout_seconds,
                         tokens_per_s=stats["sampled_tokens"] / rollout_seconds)


# ============================================================================ 10. main: log and save
def build_question_pool(config: Config, model, tokenizer, stop_ids: list[int], path: Path) -> list[list[int]]:
    """--question-pool (the paper's "pre-generate all problems up front"): ask the untrained proposer once for
    config.question_pool proposals and keep those that parse. Saved to `path`: a resumed run reuses the pool."""
    if not path.exists():
        _, proposals = propose(dataclasses.replace(config, batch_size=config.question_pool, num_generations=1),
                               model, tokenizer, stop_ids, 0, None)
        parsed = [parse_proposal(config.task, tokenizer, ids, stop_ids) for ids in proposals]  # (text, question)
        if not any(question for _, question in parsed):
            raise SystemExit(f"error: none of the {config.question_pool} pre-generated proposals is a valid question; "
                             "this model cannot propose for this task.")
        rundir.write_json(path, dict(questions=[text for text, question in parsed if question],
                                     proposal_ids=[ids for ids, (_, question) in zip(proposals, parsed) if question]))
    return json.loads(path.read_text())["proposal_ids"]


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)  # bad flags and files are refused here, before any work
    if config.task == "coding":  # how model-written programs are isolated: said (or refused) before any work
        tqdm.write(f"sandbox: {sandbox.isolation()}")
    # Checkpoints are chosen on a validation set that never holds a test problem (tasks.validation_problems).
    validation = tasks.validation_problems(config.task, config.eval_limit, config.validation_data) \
        if config.eval_every else None
    out, device = Path(config.out), evaluate.resolve_device(config.device)
    with rundir.claim(out, dataclasses.asdict(config), config.resume, RESUMABLE) as (checkpoint, state), \
            rundir.stop_requests() as stop_requested:
        rundir.seed_everything(config.seed)
        policy, sampling, reference, tokenizer = sampler.load_for_training(  # training starts from `weights`
            config.model, weights=str(checkpoint or config.model), device=device, with_reference=config.beta > 0,
            gradient_checkpointing=config.gradient_checkpointing)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        stop_ids = sampler.stop_token_ids(policy, tokenizer)
        budget = tasks.max_new_tokens(config.task, policy, config.max_new_tokens)
        # Resuming restores all a run needs to go on exactly: optimizer moments, every RNG state, the counters.
        start_step, seen_ngrams, best_validation = rundir.restore(state, optimizer) if state else (0, set(), -1.0)
        validate = lambda: evaluate.score(  # noqa: E731
            sampling, tokenizer, config.task, validation, stop_ids, budget)["accuracy"]
        initial_validation = validate() if validation and start_step == 0 else None
        pool = build_question_pool(config, sampling, tokenizer, stop_ids, out / "question_pool.json") \
            if config.question_pool else None
        progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc=config.task)
        history = []  # the steps' metrics, so that a run that cannot learn says so
        for step in progress:
            records, metrics = train_step(config, step, policy, sampling, reference, optimizer, tokenizer, stop_ids,
                                          seen_ngrams, pool, device)
            seen_ngrams |= curriculum.step_ngrams([record["question"] for record in records])
            history.append(metrics)
            if warning := curriculum.no_signal_warning(history, budget):  # once a streak of steps without signal
                tqdm.write(warning)
            last = step + 1 == config.steps
            if initial_validation is not None and step == 0:
                metrics["validation_accuracy_initial"] = initial_validation  # before any update
            if validation and ((step + 1) % config.eval_every == 0 or last):
                metrics["validation_accuracy"] = validate()  # after this step's update
                if metrics["validation_accuracy"] > best_validation:  # the best weights, chosen on validation
                    best_validation = metrics["validation_accuracy"]
                    rundir.save_checkpoint(out / "checkpoint-best", policy, tokenizer)
            keep = records if config.samples_per_step == 0 else records[:config.samples_per_step]
            rundir.append_jsonl(out / "samples.jsonl", [dict(step=step, **record) for record in keep])
            rundir.append_jsonl(out / "metrics.jsonl", [metrics])
            progress.set_postfix({key: "-" if metrics[key] is None else round(metrics[key], 2) for key in
                                  ("proposer_reward", "solver_reward", "valid_fraction", "tokens_per_s")})
            if (step + 1) % config.save_every == 0 or last or stop_requested():
                rundir.save_checkpoint(out / "checkpoint", policy, tokenizer, rundir.trainer_state(
                    step + 1, optimizer, seen_ngrams=seen_ngrams, best_validation=best_validation))
            if stop_requested() and not last:
                raise SystemExit(f"stopped after step {step}; the checkpoint is saved: continue with --resume.")
    print(json.dumps({"out": str(out), "steps": config.steps, "checkpoint": str(out / "checkpoint")}))


if __name__ == "__main__":
    main()

"""Tiny Qwen2-style models for tests and laptop demos, built offline.

There is no model hub here, so everything a checkpoint needs is made from scratch:

* `build_tokenizer`         - a byte-level BPE tokenizer with Qwen2.5's special tokens, digit splitting and
                              ChatML chat template, trained in a fraction of a second on a small built-in corpus.
* `build_random_model`      - a randomly initialised `Qwen2ForCausalLM` saved with `save_pretrained`, so code
                              under test loads it exactly like a real checkpoint (`AutoModelForCausalLM`).
* `load_or_build_tiny_base` - a tiny model *pretrained* (for a few minutes on a CPU, and on purpose only
                              partly) to propose and solve multiplication problems in the project's prompt
                              format: a base that self-play can visibly improve on a laptop.

Byte-level BPE means every string (code, unicode, emoji) round-trips through encode/decode, and the Qwen2
pre-tokenizer splits numbers into single digits, like the real Qwen2.5 tokenizer.

`python tiny.py` builds (or reuses) the tiny base and prints how well it proposes and solves.
`python tiny.py demo --seed 0 --out runs/tiny-demo-0` runs the CPU demo: held-out accuracy, self-play, accuracy again.
`python tiny.py styles --out runs/tiny-demo-0` shows how the run's solution style changed (quick vs worked).
`python tiny.py overlap --out runs/tiny-demo-0` checks that the gain is not just on test questions self-play asked.
"""

import json
import os
import random
import re
import time
import zlib
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import sqlm  # the project's prompts and chat encoding, so pretraining sees exactly what self-play will

# Paths are resolved relative to this file so the module works from any working directory.
REPO_ROOT = Path(__file__).resolve().parent
PROMPTS_DIR = REPO_ROOT / "prompts"

# ----------------------------------------------------------------------------- tokenizer

# Qwen2.5-Instruct's special tokens, in the same order (and so the same relative ids) as the real one.
ENDOFTEXT = "<|endoftext|>"  # padding token
IM_START = "<|im_start|>"  # opens a chat turn
IM_END = "<|im_end|>"  # closes a chat turn; generation stops here (eos)
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

QWEN_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# The Qwen2 pre-tokenizer regex: words, single digits (\p{N} with no `+`), punctuation runs, whitespace.
QWEN2_SPLIT_PATTERN = (  # noqa: E501 (one regex, kept on one line to compare with Qwen's)
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A few lines of code so that common code fragments (indentation, `def`, brackets) get merges too.
_CODE_SNIPPETS = [
    "def solve(nums):\n    total = 0\n    for x in nums:\n        total += x\n    return total\n",
    "import sys\n\ndef main():\n    data = sys.stdin.read().split()\n    nums = list(map(int, data))\n"
    "    print(max(nums) - min(nums))\n\nif __name__ == \"__main__\":\n    main()\n",
    "```python\nn = int(input())\nprint(sum(range(n + 1)))\n```\n",
    "class Solution:\n    def twoSum(self, nums: list[int], target: int) -> list[int]:\n"
    "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
    "                return [seen[target - x], i]\n            seen[x] = i\n        return []\n",
]


def chat_template(default_system_prompt: str | None) -> str:
    """Qwen2.5's ChatML Jinja template (the no-tools branch).

    With `default_system_prompt` set, a conversation without a system message gets that system turn first,
    as Qwen2.5 does; with None no system turn is added (short prompts suit the tiny pretrained base)."""
    if default_system_prompt is None:
        default_turn = ""
    else:
        default_turn = "{{- '<|im_start|>system\\n" + _jinja_escape(default_system_prompt) + "<|im_end|>\\n' }}"
    return (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}" + default_turn + "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if not (message['role'] == 'system' and loop.first) %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


def _jinja_escape(text: str) -> str:
    """Make `text` safe inside a single-quoted Jinja string literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def builtin_corpus() -> list[str]:
    """Texts the tokenizer is trained on: the task prompts, ChatML scaffolding, arithmetic, code."""
    texts = [path.read_text() for path in sorted(PROMPTS_DIR.glob("*.txt"))]
    texts.append(f"{IM_START}system\n{QWEN_DEFAULT_SYSTEM_PROMPT}{IM_END}\n{IM_START}user\nhi{IM_END}\n")
    # A fixed seed keeps the tokenizer (and so every token id) identical from run to run.
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(1, 999), rng.randint(1, 99)
        texts.append(f"<think> {a} * {b} = {a * b} </think> <answer> {a * b} </answer>")
        texts.append(f"{a} + {b} - {b} = {a}")
    texts.extend(_CODE_SNIPPETS)
    return texts


def train_bpe(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Train a `tokenizers` byte-level BPE on the built-in corpus plus `corpus` (a few tens of milliseconds)."""
    backend = Tokenizer(models.BPE())
    # NFC unicode normalisation, as in Qwen2.5's tokenizer.json (and transformers' Qwen2Tokenizer, which
    # AutoTokenizer picks for a qwen2 checkpoint): the built and the reloaded tokenizer then agree.
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            # use_regex=False: the Split above already did GPT-2-style splitting; this only maps bytes to symbols.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0, 1, 2, in Qwen's order
        # All 256 byte symbols are in the vocabulary, so any text can be encoded (no unknown token).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(builtin_corpus() + corpus, trainer=trainer)
    return backend


def build_tokenizer(
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    default_system_prompt: str | None = QWEN_DEFAULT_SYSTEM_PROMPT,
) -> PreTrainedTokenizerFast:
    """A Qwen2.5-like tokenizer: byte-level BPE, digits one per token, ChatML template, Qwen special tokens."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(corpus or [], vocab_size),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IM_END],
        # Qwen2.5 pads on the right by default; generation code that left-pads sets this itself.
        padding_side="right",
        model_max_length=4096,
    )
    tokenizer.chat_template = chat_template(default_system_prompt)
    return tokenizer


# ----------------------------------------------------------------------------- random model


def qwen2_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
) -> Qwen2Config:
    """A small Qwen2 config whose vocabulary and special ids match `tokenizer`."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,  # fewer kv heads than heads: grouped-query attention, as in Qwen2
        intermediate_size=intermediate_size,
        max_position_embeddings=4096,
        tie_word_embeddings=True,  # as in the small Qwen2.5 models; also halves the parameter count here
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Stop on either end token (as Qwen2.5-Instruct does), pad with <|endoftext|>, greedy by default."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext, do_sample=False)


def save_checkpoint(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir) -> Path:
    """Write model, tokenizer and generation config the way a hub checkpoint looks on disk."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_random_model(
    out_dir,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny Qwen2ForCausalLM (+ tokenizer) to `out_dir`; returns the path."""
    tokenizer = build_tokenizer()
    config = qwen2_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    torch.manual_seed(seed)  # same seed -> same weights, so tests are reproducible
    model = Qwen2ForCausalLM(config)
    return save_checkpoint(model, tokenizer, out_dir)


# ============================================================================= tiny pretrained base
#
# A random model cannot answer anything, so self-play has nothing to reinforce. For a laptop demo we instead
# pretrain, briefly and on purpose not to convergence, a tiny Qwen2 model on synthetic ChatML transcripts of
# both SQLM roles for the multiplication task:
#
#   proposer:  user = prompts/multiplication_proposer.txt     assistant = "372 * 8"
#   solver:    user = prompts/math_solver.txt with {question}  assistant = "<think> ... </think> <answer> 2976 </answer>"
#              (the thinking either quick or worked out: see `solver_completion`)
#
# Training stops early (1,250 steps), when greedy decoding solves about 60% of unseen problems (65% of the
# test problems), leaving room for self-play.

TINY_BASE_VERSION = "v2"  # bump when anything below changes what gets built; the cache directory is keyed on it

# The problems: a two- or three-digit number times a one-digit number, "372 * 8". That is 990 * 8 = 7,920
# problems, enough to hold out 500 distinct test problems, and small enough for a 2-layer model to learn
# part of in a few minutes. (Two-digit by two-digit problems were tried first, in base v1: the tiny model
# could not learn them in minutes, and its majority vote on them was mostly wrong - see the README.)
MULTIPLICANDS = range(10, 1000)
MULTIPLIERS = range(2, 10)

# Problems are split by operand pair into buckets with a stable hash (crc32, unlike Python's salted hash()):
TEST_BUCKET = 0  # held out: `heldout_problems` draws from these pairs only; pretraining never sees them
VALIDATION_BUCKET = 1  # held out too: used by self-play to pick its best checkpoint, and to log pretraining
NUM_BUCKETS = 10  # so 10% of pairs are test, 10% validation, 80% training


def sample_problem(rng: random.Random) -> tuple[str, int]:
    """One multiplication problem -> (question text like "372 * 8", answer), uniform over all 7,920."""
    a, b = rng.choice(MULTIPLICANDS), rng.choice(MULTIPLIERS)
    return f"{a} * {b}", a * b


def parse_operands(question: str) -> tuple[int, int] | None:
    """ "37 * 8" -> (37, 8); anything not of the form `<int> * <int>` -> None."""
    match = re.fullmatch(r"\s*(\d+) \* (\d+)\s*", question)
    return (int(match.group(1)), int(match.group(2))) if match else None


def problem_bucket(question: str) -> int:
    """Which of NUM_BUCKETS split buckets a problem belongs to. The key is the *unordered* operand pair,
    so "8 * 37" lands in the same bucket as "37 * 8" and the split cannot leak through commutativity."""
    a, b = parse_operands(question)
    key = f"{min(a, b)}*{max(a, b)}"
    return zlib.crc32(key.encode()) % NUM_BUCKETS


def sample_problem_in(rng: random.Random, buckets: set[int], inside: bool) -> tuple[str, int]:
    """`sample_problem`, redrawn until its bucket is (inside=True) or is not (inside=False) in `buckets`.
    Rejection sampling keeps the difficulty mix identical across the training, validation and test splits."""
    while True:
        question, answer = sample_problem(rng)
        if (problem_bucket(question) in buckets) == inside:
            return question, answer


def bucket_problems(bucket: int) -> list[tuple[str, int]]:
    """Every problem of the distribution whose operand pair falls in `bucket`, in a fixed order."""
    problems = [(f"{a} * {b}", a * b) for a in MULTIPLICANDS for b in MULTIPLIERS]
    return [(question, answer) for question, answer in problems if problem_bucket(question) == bucket]


def heldout_problems(n: int = 500, seed: int = 1234) -> list[tuple[str, int]]:
    """`n` distinct test problems, from operand pairs that pretraining never saw in any role."""
    return random.Random(seed).sample(bucket_problems(TEST_BUCKET), n)


def validation_problems(n: int = 256, seed: int = 4321) -> list[tuple[str, int]]:
    """`n` distinct problems disjoint from both training and test pairs (for choosing checkpoints)."""
    return random.Random(seed).sample(bucket_problems(VALIDATION_BUCKET), n)


def sample_training_problem(rng: random.Random) -> tuple[str, int]:
    """A problem for pretraining: never from the test or validation buckets."""
    return sample_problem_in(rng, {TEST_BUCKET, VALIDATION_BUCKET}, inside=False)


# ----------------------------------------------------------------------------- transcripts


def proposer_prompt_text() -> str:
    """The user turn that asks for a multiplication question (the project's proposer prompt, verbatim)."""
    return sqlm.read_prompt("multiplication_proposer")


def solver_prompt_text(question: str) -> str:
    """The user turn that asks for a solution (the project's math solver prompt with the question filled in)."""
    return sqlm.solver_prompt("multiplication", question)


def solver_completion(question: str, answer: int, worked: bool) -> str:
    """What the solver should write, in one of two styles, then the answer in the tags the prompt asks for:

      quick:   <think> 372 * 8 = 2976 </think> <answer> 2976 </answer>
      worked:  <think> 372 * 8 = 300 * 8 + 70 * 8 + 2 * 8 = 2400 + 560 + 16 = 2976 </think> <answer> 2976 </answer>

    Pretraining shows both, half and half, so the base samples either. Why two styles: they give self-play
    a choice to learn. The worked style is right more often (held-out samples of the base: 57% against 30%,
    `python tiny.py --votes 8`), so its answers agree with the majority more often, earn the solver reward
    more often, and self-play shifts the solver towards working things out - with no label saying which
    style is better. (Base v1 wrote each problem one way only, and had two-digit multipliers; its majority
    vote was mostly wrong where the proposer was paid, and self-play did not lift it: see the README.)"""
    a, b = parse_operands(question)
    if worked:
        digits = str(a)
        # 372 -> [300, 70, 2]; zero digits are skipped (305 -> [300, 5]).
        parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
        products = " + ".join(f"{part} * {b}" for part in parts)
        partial_sums = " + ".join(str(part * b) for part in parts)
        steps = f"{products} = {partial_sums} = {answer}"
    else:
        steps = f"{answer}"
    return f"<think> {question} = {steps} </think> <answer> {answer} </answer>"


def is_worked(completion: str) -> bool:
    """Which style a solver completion is in: a worked one adds partial products ("300 * 8 + ..."), a quick
    one has no "+" before </think>."""
    return "+" in completion.split("</think>")[0]


def transcript_ids(tokenizer, user_text: str, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one ChatML exchange. Labels are -100 (ignored by the loss) on the prompt, and
    the token ids on the assistant's reply and its closing <|im_end|>: the model learns to answer and to stop,
    not to predict the prompt."""
    prompt = sqlm.chat_prompt_ids(tokenizer, user_text)
    reply = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + reply, [-100] * len(prompt) + reply


def solver_prefix_ids(tokenizer) -> list[int]:
    """The tokens every solver transcript starts with: the chat up to where the question is filled in."""
    marker = "{question}"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": solver_prompt_text(marker)}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(text[: text.index(marker)], add_special_tokens=False)


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) to one tensor batch; padding is masked and ignored by the loss."""
    width = max(len(ids) for ids, _ in examples)
    input_ids, labels, attention_mask = [], [], []
    for ids, labs in examples:
        gap = width - len(ids)
        input_ids.append(ids + [pad_id] * gap)
        labels.append(labs + [-100] * gap)
        attention_mask.append([1] * len(ids) + [0] * gap)
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(attention_mask),
    }


def shared_prefix_forward(model, prefix: list[int], examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Run a batch of transcripts that all begin with the same `prefix` tokens -> (logits, labels).

    The solver prompt is ~55 tokens of fixed instructions before the question, more than the rest of a
    transcript. Instead of running those tokens once per example we run them once per batch, then let every
    example attend to the same cached keys/values (copied along the batch dimension). The result equals an
    ordinary forward pass over the full transcripts; gradients flow into the prefix pass too.
    Returned logits[:, t] predict labels[:, t + 1], as for a plain forward pass. The prefix's own last
    logit is not returned, so the first token after the prefix must be an unlabelled prompt token."""
    for ids, labels in examples:
        # Tokenization must not merge across the cut: check rather than assume.
        assert ids[: len(prefix)] == prefix, "transcript does not start with the shared prefix"
        assert labels[len(prefix)] == -100, "the prefix must end before the last prompt token"
    rests = [(ids[len(prefix) :], labels[len(prefix) :]) for ids, labels in examples]
    batch = {name: tensor.to(model.device) for name, tensor in pad_batch(rests, pad_id).items()}
    batch_size = batch["input_ids"].shape[0]
    prefix_output = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True)
    cache = prefix_output.past_key_values
    cache.batch_repeat_interleave(batch_size)
    # The attention mask covers prefix + rest; with right padding the positions simply continue the prefix's.
    prefix_mask = torch.ones(batch_size, len(prefix), dtype=batch["attention_mask"].dtype, device=model.device)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=torch.cat([prefix_mask, batch["attention_mask"]], dim=1),
        past_key_values=cache,
    ).logits
    return logits, batch["labels"]


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over the labelled positions, number of those positions)."""
    predictions, targets = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        predictions.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return loss, int((targets != -100).sum())


def base_tokenizer() -> PreTrainedTokenizerFast:
    """Tokenizer of the tiny base. Its BPE is trained on the two prompts as well (as a real tokenizer is trained
    on text like its model's), so the fixed prompts take fewer tokens and training is cheaper.
    No default system turn: the base never saw one, and short prompts keep it fast."""
    corpus = [proposer_prompt_text(), solver_prompt_text("")] * 20
    return build_tokenizer(corpus=corpus, vocab_size=1024, default_system_prompt=None)


# ----------------------------------------------------------------------------- pretraining


@torch.no_grad()
def teacher_forced_exact_match(model, tokenizer, problems: list[tuple[str, int]], batch_size: int = 128) -> float:
    """Fraction of problems where the model's argmax, at every step, writes one of the two gold completions.

    That is exactly "greedy decoding writes a gold completion", measured with one forward pass per batch and
    style instead of token-by-token decoding - cheap enough to check often during pretraining. Both styles
    count: greedy decoding picks one of them, and either is a right answer."""
    was_training = model.training
    model.eval()
    prefix = solver_prefix_ids(tokenizer)
    hits = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        solved = torch.zeros(len(chunk), dtype=torch.bool)
        for worked in (False, True):
            examples = [
                transcript_ids(tokenizer, solver_prompt_text(q), solver_completion(q, a, worked)) for q, a in chunk
            ]
            logits, labels = shared_prefix_forward(model, prefix, examples, tokenizer.pad_token_id)
            predictions, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
            scored = targets != -100
            solved |= ((predictions == targets) | ~scored).all(dim=1).cpu()
        hits += solved.sum().item()
    model.train(was_training)
    return hits / len(problems)


def pretrain_tiny_base(
    out_dir,
    seed: int = 0,
    max_steps: int = 1250,
    eval_every: int = 250,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    warmup_steps: int = 100,
    proposer_fraction: float = 0.2,
    worked_fraction: float = 0.5,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    device: str = "cpu",
    log=print,
) -> Path:
    """Train a tiny Qwen2 on synthetic proposer/solver transcripts and save it to `out_dir`.

    Stops after `max_steps`, on purpose long before it has learned everything (1,250 steps: ~60% of the
    validation problems solved): a base that already solves everything would leave self-play nothing to learn.
    Deterministic given `seed` (on a given machine and thread count)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    # The solution style gets its own random stream, so the problems drawn do not depend on the style mix.
    style_rng = random.Random(seed + 99)
    tokenizer = base_tokenizer()
    config = qwen2_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    model = Qwen2ForCausalLM(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    # Linear warm-up then constant: the stopping step is not known in advance, so no decay schedule.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    # Each role's transcripts share a prompt prefix: the solver's instructions before the question, or the
    # whole proposer prompt but its last token (whose logit must predict the proposal's first token).
    solver_prefix = solver_prefix_ids(tokenizer)
    proposer_prefix = sqlm.chat_prompt_ids(tokenizer, proposer_prompt_text())[:-1]
    validation = validation_problems()
    started = time.time()
    for step in range(1, max_steps + 1):
        solver_examples, proposer_examples = [], []
        for _ in range(batch_size):
            question, answer = sample_training_problem(rng)
            if rng.random() < proposer_fraction:
                proposer_examples.append(transcript_ids(tokenizer, proposer_prompt_text(), question))
            else:
                worked = style_rng.random() < worked_fraction
                completion = solver_completion(question, answer, worked)
                solver_examples.append(transcript_ids(tokenizer, solver_prompt_text(question), completion))
        # Mean cross-entropy over all assistant tokens of the batch, whichever role they belong to.
        total_loss, total_tokens = 0.0, 0
        for prefix, examples in ((solver_prefix, solver_examples), (proposer_prefix, proposer_examples)):
            if examples:
                logits, labels = shared_prefix_forward(model, prefix, examples, tokenizer.pad_token_id)
                loss_sum, tokens = summed_token_loss(logits, labels)
                total_loss, total_tokens = total_loss + loss_sum, total_tokens + tokens
        loss = total_loss / total_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % eval_every == 0:  # progress report only: training always runs `max_steps`
            accuracy = teacher_forced_exact_match(model, tokenizer, validation)
            elapsed = time.time() - started
            log(f"step {step:5d}  loss {loss.item():.3f}  validation greedy accuracy {accuracy:.3f}  {elapsed:.0f}s")
    return save_checkpoint(model.cpu(), tokenizer, out_dir)


def default_cache_dir() -> Path:
    """Where built bases live: $SQLM_CACHE if set, else ~/.cache/sqlm."""
    return Path(os.environ.get("SQLM_CACHE") or Path.home() / ".cache" / "sqlm")


def load_or_build_tiny_base(cache_dir=None) -> Path:
    """Directory of the tiny pretrained multiplication base, building it (a few minutes on 2 CPU cores) the
    first time. The directory name carries TINY_BASE_VERSION, so a changed recipe never reuses a stale build."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"tiny-multiplication-base-{TINY_BASE_VERSION}"
    if not (path / "config.json").exists():
        # Build into a temporary sibling and rename at the end, so an interrupted build is never mistaken
        # for a finished one.
        partial = cache_dir / f"{path.name}.partial-{os.getpid()}"
        pretrain_tiny_base(partial)
        partial.rename(path)
    return path


# ----------------------------------------------------------------------------- measuring the base


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[list[int]], temperature: float,
                         max_new_tokens: int = sqlm.TINY_MAX_NEW_TOKENS,
                         batch_size: int = 250) -> list[str]:
    """Decode one completion per prompt with Hugging Face `generate`: greedy when temperature == 0, else plain
    sampling at that temperature (no top-k / top-p truncation, which HF applies by default: top_k=50)."""
    completions = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        # Left padding, so every prompt ends right where generation starts.
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in chunk])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk])
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        else:
            sampling = {"do_sample": False}
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **sampling
        )
        completions += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return completions


def evaluate_tiny_base(path, n: int = 500, votes: int = 8, seed: int = 0, temperature: float = 1.0) -> dict:
    """The numbers that matter for self-play, on `n` held-out problems:

    greedy accuracy; accuracy of one sample at `temperature` (1, as in training, unless asked otherwise;
    averaged over `votes` samples per problem), overall and per solution style;
    accuracy of the majority vote of `votes` samples (the pseudo-label self-play trains towards), overall and
    on the questions the proposer is paid for; how often answers are well-formed; and what the model proposes
    from the proposer prompt."""
    # Imported here, not at the top: only this measurement needs the project's answer parsing.
    from rewards import extract_answer, majority_vote

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(seed)  # sampling below is then reproducible
    problems = heldout_problems(n)
    prompts = [sqlm.chat_prompt_ids(tokenizer, solver_prompt_text(question)) for question, _ in problems]
    truths = [str(answer) for _, answer in problems]

    greedy = [extract_answer(text) for text in generate_completions(model, tokenizer, prompts, temperature=0.0)]
    sampled_texts = generate_completions(model, tokenizer, [p for p in prompts for _ in range(votes)], temperature)
    sampled = [extract_answer(text) for text in sampled_texts]
    sampled_worked = [is_worked(text) for text in sampled_texts]
    groups = [sampled[i * votes : (i + 1) * votes] for i in range(n)]
    majorities = [majority_vote(group) for group in groups]

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    greedy_correct = [g == t for g, t in zip(greedy, truths)]
    sample_correct = [s == truths[i // votes] for i, s in enumerate(sampled)]
    majority_correct = [answer == t for (answer, _), t in zip(majorities, truths)]
    in_band = [1 < count < votes for _, count in majorities]  # the questions the proposer is paid for
    results = {
        "greedy_accuracy": mean(greedy_correct),
        "greedy_well_formed": mean(g is not None for g in greedy),
        "sample_accuracy": mean(sample_correct),
        "sample_well_formed": mean(s is not None for s in sampled),
        "sample_worked_share": mean(sampled_worked),
        "sample_accuracy_quick": mean(c for c, w in zip(sample_correct, sampled_worked) if not w),
        "sample_accuracy_worked": mean(c for c, w in zip(sample_correct, sampled_worked) if w),
        f"majority_of_{votes}_accuracy": mean(majority_correct),
        # How often the proposer would be rewarded for these questions (release gate: 1 < count < votes).
        "proposer_reward_rate": mean(in_band),
        # Is the pseudo-label right where the proposer is paid? Self-play needs this well above 50%.
        "in_band_majority_accuracy": mean(c for c, b in zip(majority_correct, in_band) if b),
        "majority_count_histogram": {k: sum(count == k for _, count in majorities) for k in range(votes + 1)},
    }

    proposer_prompt = sqlm.chat_prompt_ids(tokenizer, proposer_prompt_text())
    proposals = generate_completions(model, tokenizer, [proposer_prompt] * n, temperature=1.0)
    operands = [parse_operands(text) for text in proposals]
    well_formed = [text.strip() for text, pair in zip(proposals, operands) if pair is not None]
    in_distribution = [a in MULTIPLICANDS and b in MULTIPLIERS for a, b in filter(None, operands)]
    results.update(
        {
            "proposal_well_formed": mean(pair is not None for pair in operands),
            "proposal_distinct_fraction": len(set(well_formed)) / max(1, len(well_formed)),
            "proposal_in_training_distribution": mean(in_distribution),
            "proposal_examples": proposals[:8],
        }
    )
    return results


def read_samples(run_dir) -> list[dict]:
    """A run's samples.jsonl: one record per logged question (its solver answers, majority and exact truth)."""
    return [json.loads(line) for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines()]


def style_report(run_dir, window: int = 10) -> list[dict]:
    """What self-play did to the solution style, from a run's samples.jsonl: per `window` steps, the share of
    solver answers written in the worked style and how often each style's answer was right. Right means equal
    to the exact `truth` that samples.jsonl logs for auditing; training never sees it."""
    rows = read_samples(run_dir)
    report = []
    for first_step in range(0, max(row["step"] for row in rows) + 1, window):
        answers = [
            (is_worked(completion), answer == row["truth"])
            for row in rows
            if first_step <= row["step"] < first_step + window
            for completion, answer in zip(row["completions"], row["answers"])
        ]
        worked = [right for is_worked_answer, right in answers if is_worked_answer]
        quick = [right for is_worked_answer, right in answers if not is_worked_answer]
        report.append(
            {
                "steps": f"{first_step}-{first_step + window - 1}",
                "answers": len(answers),
                "worked_share": round(len(worked) / len(answers), 3) if answers else None,
                "worked_right": round(sum(worked) / len(worked), 3) if worked else None,
                "quick_right": round(sum(quick) / len(quick), 3) if quick else None,
            }
        )
    return report


# ============================================================================= the laptop demo
#
# python tiny.py demo --seed 0 --out runs/tiny-demo-0
#
# Held-out greedy accuracy of the tiny base, then SQLM self-play through sqlm.py exactly as for a Qwen run
# (no labels anywhere), then the same held-out accuracy again. Flags after the known ones go to sqlm.py.

# --samples-per-step 0 logs every question to samples.jsonl (not a sample of 16), so `overlap` sees them all.
DEMO_FLAGS = ["--steps", "30", "--batch-size", "8", "--num-generations", "8", "--lr", "5e-5", "--eval-every", "5",
              "--samples-per-step", "0", "--device", "cpu"]


def heldout_correct(model_path: str) -> list[bool]:
    """Greedy right/wrong on each of the 500 held-out problems (evaluate.py --tiny), through the project's own
    sampler."""
    import evaluate  # only the demo needs it

    model, tokenizer = sqlm.load_model(model_path, torch.device("cpu"))
    stop_ids = sqlm.stop_token_ids(model, tokenizer)
    return evaluate.score(model, tokenizer, "multiplication", evaluate.tiny_problems("test"), stop_ids,
                          sqlm.TINY_MAX_NEW_TOKENS)["is_correct"]


def heldout_accuracy(model_path: str) -> float:
    """Greedy accuracy on the 500 held-out problems."""
    correct = heldout_correct(model_path)
    return sum(correct) / len(correct)


def heldout_overlap(run_dir) -> dict:
    """Did self-play simply practise the test questions? The proposer is free to ask anything, including
    held-out operand pairs (it never sees their answers). This splits the held-out problems into those asked
    during the run (as "a * b" or "b * a") and those never asked, and scores the base and the run's final
    checkpoint on each part."""
    questions = [row["question"] for row in read_samples(run_dir)]
    asked = {frozenset(pair) for pair in map(parse_operands, questions) if pair}
    heldout = [frozenset(parse_operands(question)) for question, _ in heldout_problems()]
    was_asked = [pair in asked for pair in heldout]
    before, after = heldout_correct("tiny"), heldout_correct(str(Path(run_dir) / "checkpoint"))

    def accuracy(correct: list[bool], keep: bool) -> float | None:
        kept = [c for c, a in zip(correct, was_asked) if a == keep]
        return round(sum(kept) / len(kept), 3) if kept else None

    from_test = [parse_operands(q) is not None and problem_bucket(q) == TEST_BUCKET for q in questions]
    return {
        "self_play_questions": len(questions),
        "share_from_test_pairs": round(sum(from_test) / len(questions), 3),
        "heldout_asked": sum(was_asked),
        "heldout_never_asked": len(was_asked) - sum(was_asked),
        "never_asked_before": accuracy(before, False),
        "never_asked_after": accuracy(after, False),
        "asked_before": accuracy(before, True),
        "asked_after": accuracy(after, True),
    }


def demo(seed: int, out: str, extra_flags: list[str]) -> dict:
    started = time.time()
    before = heldout_accuracy("tiny")
    sqlm.main(["--model", "tiny", "--seed", str(seed), "--out", out, *DEMO_FLAGS, *extra_flags])
    result = dict(seed=seed, out=out, heldout_problems=len(heldout_problems()), accuracy_before=before,
                  accuracy_after=heldout_accuracy(str(Path(out) / "checkpoint")))
    if (Path(out) / "checkpoint-best").exists():  # chosen on the validation pairs, never on these
        result["accuracy_best_by_validation"] = heldout_accuracy(str(Path(out) / "checkpoint-best"))
    result["seconds"] = round(time.time() - started, 1)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Build the tiny base and report on it (no command), run the CPU demo (demo), or show what "
        "self-play did to the solution style of a run (styles --out RUN)."
    )
    parser.add_argument("command", nargs="?", choices=["demo", "styles", "overlap"],
                        help="demo: self-play + before/after accuracy; styles: worked-style share over a run; "
                        "overlap: held-out accuracy split by whether self-play asked the question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/tiny-demo", help="the run directory (demo writes it, styles reads it)")
    parser.add_argument("--votes", type=int, default=8, help="samples per problem for the base's report")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature: of the report's votes (default 1), or passed on to sqlm.py by demo")
    args, extra = parser.parse_known_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # the demo's budget: 2 CPU cores
    if args.command == "demo":
        if args.temperature is not None:  # parsed here because the report uses it too; it belongs to sqlm.py
            extra += ["--temperature", str(args.temperature)]
        print(json.dumps(demo(args.seed, args.out, extra)))
    elif args.command in ("styles", "overlap"):
        if not (Path(args.out) / "samples.jsonl").exists():
            raise SystemExit(f"error: no samples.jsonl in {args.out!r}; pass a tiny demo's run directory with --out.")
        for line in style_report(args.out) if args.command == "styles" else [heldout_overlap(args.out)]:
            print(json.dumps(line))
    else:
        started = time.time()
        base = load_or_build_tiny_base()
        print(f"tiny base at {base} ({time.time() - started:.0f}s)")
        temperature = 1.0 if args.temperature is None else args.temperature
        for name, value in evaluate_tiny_base(base, votes=args.votes, temperature=temperature).items():
            print(f"{name:40s} {value}")

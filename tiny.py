"""The CPU demo's model, built offline: a tiny Qwen2-architecture chat model pretrained for a few minutes to
propose and solve multiplication problems in the project's own prompt format, so that self-play has something
to improve on a laptop. `python tiny.py` builds it (or finds it built) and prints its directory;
`python tiny.py ladder` does the same for the curriculum demo's base (see Recipe).

What the directory holds, like any model directory, plus the demo's data:
  config.json, model.safetensors, tokenizer files   what from_pretrained reads
  generation_config.json                            stop tokens, and max_new_tokens = 80 (its longest answer + 1)
  test.jsonl, validation.jsonl                      held-out problems (evaluate.py --data, sqlm.py --validation-data)

Built once into the sqlm cache ($SQLM_CACHE, else ~/.cache/sqlm), where `--model tiny` (`--model tiny-ladder`)
finds it (sampler.py).
Also here: `build_tokenizer`, a byte-level BPE tokenizer with Qwen2.5's special tokens, digit splitting and
ChatML chat template, which the tests' tiny random models use too (tests/tiny_model.py).
"""

import argparse
import fcntl
import json
import os
import random
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import sampler  # the chat encoding and the cache directory
import tasks  # the project's prompts, so pretraining sees exactly what self-play will

TOKENIZER_CORPUS = Path(__file__).resolve().parent / "data" / "tiny_tokenizer_corpus"

# ----------------------------------------------------------------------------- tokenizer

# Qwen2.5-Instruct's special tokens, in the same order (and so the same relative ids) as the real one.
ENDOFTEXT = "<|endoftext|>"  # padding token
IM_START = "<|im_start|>"  # opens a chat turn
IM_END = "<|im_end|>"  # closes a chat turn; generation stops here (eos)
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

QWEN_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# The Qwen2 pre-tokenizer regex: words, single digits (\p{N} with no `+`), punctuation runs, whitespace.
QWEN2_SPLIT_PATTERN = (  # Qwen2's regex, split at its alternatives only to fit the line length
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
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
    # The prompt files as they were when the base was designed (data/tiny_tokenizer_corpus/README.md): a prompt
    # edit must not silently change every token id of the demo model.
    texts = [path.read_text() for path in sorted(TOKENIZER_CORPUS.glob("*.txt"))]
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


def generation_config(tokenizer: PreTrainedTokenizerFast, max_new_tokens: int | None = None) -> GenerationConfig:
    """Stop on either end token (as Qwen2.5-Instruct does), pad with <|endoftext|>, greedy by default, and (for a
    model whose answers are short) the response budget sqlm.py and evaluate.py use by default."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext, do_sample=False,
                            max_new_tokens=max_new_tokens)


def save_model_dir(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir,
                   max_new_tokens: int | None = None) -> Path:
    """Write model, tokenizer and generation config the way a hub checkpoint looks on disk."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config(tokenizer, max_new_tokens)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ============================================================================= tiny pretrained base
#
# A random model cannot answer anything, so self-play has nothing to reinforce. For a laptop demo we instead
# pretrain, briefly and on purpose not to convergence, a tiny Qwen2 model on synthetic ChatML transcripts of
# both SQLM roles for the multiplication task:
#
#   proposer:  user = prompts/multiplication_proposer.txt     assistant = "372 * 8"
#   solver:    user = prompts/math_solver.txt with {question}
#              assistant = "<think> ... </think> <answer> 2976 </answer>"
#              (the thinking either quick or worked out: see `solver_completion`)
#
# Training stops early (1,250 steps), when greedy decoding solves 60-65% of the validation problems (65% of the
# test problems on one machine, 71% on another: the build depends on the CPU's float kernels), leaving room for
# self-play.

MULTIPLIERS = range(2, 10)  # every problem is "<multiplicand> * <one-digit multiplier>"


@dataclass(frozen=True)
class Recipe:
    """What a tiny base learns in pretraining, and which problems it never sees. Two recipes:

    UNIFORM (the README's CPU demo): a two- or three-digit number times a one-digit number, "372 * 8", uniform
      over all 990 * 8 = 7,920 problems, for both roles. Small enough for a 2-layer model to learn part of in a
      few minutes, large enough to hold out 500 distinct test problems. (Two-digit by two-digit problems were
      tried first, in base v1: the tiny model could not learn them in minutes, and its majority vote on them was
      mostly wrong: see the README.)
    LADDER (the curriculum demo): rungs by the multiplicand's digits, 1 (the times table), 2 and 3. The proposer
      is pretrained to ask mostly rung-1 questions, which the solver knows by heart (too easy: all votes agree);
      the solver sees every rung, rung 3 most, and still solves only part of it. A proposer that learns where
      its reward is moves up the ladder; a frozen one keeps asking the times table.

    rungs: digits -> the multiplicands of that rung. proposer_weights / solver_weights: how often pretraining
    draws each rung for each role (None: uniform over all problems, for both roles). heldout / validation:
    problems held out per rung (None: every problem of the rung in that split), or None for `n` uniform ones."""
    cache_name: str  # the directory in the sqlm cache; a changed recipe must get a new name
    alias: str  # --model ALIAS finds it (sampler.model_location)
    rungs: dict
    proposer_weights: dict | None = None
    solver_weights: dict | None = None
    heldout: dict | None = None
    validation: dict | None = None

    @property
    def multiplicands(self) -> range:
        return range(min(r.start for r in self.rungs.values()), max(r.stop for r in self.rungs.values()))


UNIFORM = Recipe("tiny-multiplication-base-v2", "tiny", {2: range(10, 100), 3: range(100, 1000)})
LADDER = Recipe("tiny-ladder-base-v3", "tiny-ladder", {1: range(2, 10), 2: range(10, 100), 3: range(100, 1000)},
                proposer_weights={1: 0.80, 2: 0.15, 3: 0.05}, solver_weights={1: 0.10, 2: 0.30, 3: 0.60},
                heldout={1: None, 2: None, 3: 400}, validation={1: None, 2: 64, 3: 186})
RECIPES = {"uniform": UNIFORM, "ladder": LADDER}

# Problems are split by operand pair into buckets with a stable hash (crc32, unlike Python's salted hash()):
TEST_BUCKET = 0  # held out: `heldout_problems` draws from these pairs only; pretraining never sees them
VALIDATION_BUCKET = 1  # held out too: used by self-play to pick its best checkpoint, and to log pretraining
NUM_BUCKETS = 10  # so 10% of pairs are test, 10% validation, 80% training


def sample_problem(rng: random.Random, recipe: Recipe = UNIFORM, weights: dict | None = None) -> tuple[str, int]:
    """One problem -> (question text like "372 * 8", answer): a rung drawn with `weights`, then uniform within
    it; without weights, uniform over all of the recipe's problems."""
    if weights is None:
        a = rng.choice(recipe.multiplicands)
    else:
        a = rng.choice(recipe.rungs[rng.choices(list(weights), weights=list(weights.values()))[0]])
    b = rng.choice(MULTIPLIERS)
    return f"{a} * {b}", a * b


def parse_operands(question: str) -> tuple[int, int] | None:
    """ "37 * 8" -> (37, 8); anything not of the form `<int> * <int>` -> None."""
    match = re.fullmatch(r"\s*(\d+) \* (\d+)\s*", question)
    return (int(match.group(1)), int(match.group(2))) if match else None


def question_rung(question: str | None) -> int | None:
    """A question's rung: the digits of its larger operand when the other is a one-digit multiplier ("372 * 8"
    -> 3, "8 * 37" -> 2, "7 * 8" -> 1); None for anything else (unparseable, a factor 0 or 1, 4+ digits)."""
    pair = parse_operands(question) if question else None
    if pair is None:
        return None
    large, small = max(pair), min(pair)
    return len(str(large)) if small in MULTIPLIERS and len(str(large)) <= 3 else None


def problem_bucket(question: str) -> int:
    """Which of NUM_BUCKETS split buckets a problem belongs to. The key is the *unordered* operand pair,
    so "8 * 37" lands in the same bucket as "37 * 8" and the split cannot leak through commutativity."""
    a, b = parse_operands(question)
    key = f"{min(a, b)}*{max(a, b)}"
    return zlib.crc32(key.encode()) % NUM_BUCKETS


def bucket_problems(bucket: int, multiplicands: range) -> list[tuple[str, int]]:
    """Every problem with these multiplicands whose operand pair falls in `bucket`, in a fixed order."""
    problems = [(f"{a} * {b}", a * b) for a in multiplicands for b in MULTIPLIERS]
    return [(question, answer) for question, answer in problems if problem_bucket(question) == bucket]


def held_out(recipe: Recipe, bucket: int, per_rung: dict | None, n: int, seed: int) -> list[tuple[str, int]]:
    """Distinct problems of one held-out bucket: `n` drawn uniformly, or per_rung[rung] of each rung (None: all)."""
    rng = random.Random(seed)
    if per_rung is None:
        return rng.sample(bucket_problems(bucket, recipe.multiplicands), n)
    chosen = []
    for rung, count in per_rung.items():
        pool = bucket_problems(bucket, recipe.rungs[rung])
        chosen += pool if count is None else rng.sample(pool, count)
    return chosen


def heldout_problems(recipe: Recipe = UNIFORM, n: int = 500) -> list[tuple[str, int]]:
    """The test problems: operand pairs that pretraining never saw, in any role."""
    return held_out(recipe, TEST_BUCKET, recipe.heldout, n, seed=1234)


def validation_problems(recipe: Recipe = UNIFORM, n: int = 256) -> list[tuple[str, int]]:
    """Problems disjoint from both training and test pairs, for choosing checkpoints."""
    return held_out(recipe, VALIDATION_BUCKET, recipe.validation, n, seed=4321)


def sample_training_problem(rng: random.Random, recipe: Recipe = UNIFORM, weights: dict | None = None):
    """A problem for pretraining, redrawn until it is from neither the test nor the validation buckets
    (rejection sampling keeps the mix of the splits identical)."""
    while True:
        question, answer = sample_problem(rng, recipe, weights)
        if problem_bucket(question) not in (TEST_BUCKET, VALIDATION_BUCKET):
            return question, answer


# ----------------------------------------------------------------------------- transcripts


def proposer_prompt_text() -> str:
    """The user turn that asks for a multiplication question (the project's proposer prompt, verbatim)."""
    return tasks.read_prompt("multiplication_proposer")


def solver_prompt_text(question: str) -> str:
    """The user turn that asks for a solution (the project's math solver prompt with the question filled in)."""
    return tasks.solver_prompt("multiplication", question)


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
    if worked and a >= 10:  # a one-digit multiplicand has nothing to work out: the times table is quick only
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
    prompt = sampler.chat_prompt_ids(tokenizer, user_text)
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
    cache = prefix_output.cache
    cache.batch_repeat_interleave(batch_size)
    # The attention mask covers prefix + rest; with right padding the positions simply continue the prefix's.
    prefix_mask = torch.ones(batch_size, len(prefix), dtype=batch["attention_mask"].dtype, device=model.device)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=torch.cat([prefix_mask, batch["attention_mask"]], dim=1),
        cache=cache,
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
    recipe: Recipe = UNIFORM,
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
    proposer_prefix = sampler.chat_prompt_ids(tokenizer, proposer_prompt_text())[:-1]
    validation = validation_problems(recipe)
    started = time.time()
    for step in range(1, max_steps + 1):
        solver_examples, proposer_examples = [], []
        for _ in range(batch_size):
            if recipe.proposer_weights is None:  # uniform: the problem, then the role that gets it
                question, answer = sample_training_problem(rng, recipe)
                proposer = rng.random() < proposer_fraction
            else:  # per-role rung mix: the role, then a problem from its mix
                proposer = rng.random() < proposer_fraction
                weights = recipe.proposer_weights if proposer else recipe.solver_weights
                question, answer = sample_training_problem(rng, recipe, weights)
            if proposer:
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
    return save_model_dir(model.cpu(), tokenizer, out_dir, MAX_NEW_TOKENS)


MAX_NEW_TOKENS = 80  # the response budget written into generation_config: the longest solution is 66 tokens


def finish_model_dir(path: Path, recipe: Recipe = UNIFORM) -> None:
    """What the model directory carries besides the weights: the demo's held-out problems as JSON lines, test.jsonl
    (for evaluate.py --data) and validation.jsonl (for sqlm.py --validation-data), and the response budget in
    generation_config.json. Written when missing, so a base built by an older version of this file (same
    weights) gets them too; the split is fixed, so rewriting never changes them."""
    for name, problems in (("test.jsonl", heldout_problems(recipe)),
                           ("validation.jsonl", validation_problems(recipe))):
        if not (path / name).exists():
            tmp = path / f"{name}.tmp"
            tmp.write_text("".join(json.dumps({"question": q, "answer": str(a)}) + "\n" for q, a in problems))
            tmp.replace(path / name)
    config = GenerationConfig.from_pretrained(path)
    if config.max_new_tokens != MAX_NEW_TOKENS:
        config.max_new_tokens = MAX_NEW_TOKENS
        config.save_pretrained(path)


def load_or_build_tiny_base(cache_dir=None, log=print, recipe: Recipe = UNIFORM) -> Path:
    """Directory of a tiny pretrained multiplication base, building it (a few minutes on 2 CPU cores) the first
    time. Each recipe has its own directory name, so a changed recipe never reuses a stale build. Two first
    runs at once do not race: the second waits for the first one's build, then uses it."""
    cache_dir = Path(cache_dir) if cache_dir is not None else sampler.cache_dir()
    path = cache_dir / recipe.cache_name
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f".{recipe.cache_name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this build (or someone else's) is done
        if not (path / "config.json").exists():
            log(f"building the tiny base once into {path} (a few minutes on 2 cores)")
            # Build into a temporary sibling and rename at the end: an interrupted build is never mistaken for
            # a finished one.
            partial = cache_dir / f"{path.name}.partial-{os.getpid()}"
            pretrain_tiny_base(partial, recipe, log=log)
            partial.rename(path)
        finish_model_dir(path, recipe)
        alias = cache_dir / recipe.alias  # --model ALIAS finds it
        if not alias.is_symlink() or os.readlink(alias) != path.name:
            tmp = cache_dir / f".{recipe.alias}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path.name)  # relative, so the cache can move
            tmp.replace(alias)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="uniform", choices=sorted(RECIPES),
                        help="uniform: the README's demo base; ladder: the curriculum demo's (see Recipe)")
    recipe = RECIPES[parser.parse_args(argv).recipe]
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # the demo's budget: 2 CPU cores
    started = time.time()
    print(f"{load_or_build_tiny_base(recipe=recipe)} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()

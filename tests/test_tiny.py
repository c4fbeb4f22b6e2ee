"""tiny.py and tests/tiny_model.py: the offline checkpoints behave like a real Qwen2.5-Instruct checkpoint where
the project relies on it, and the CPU demo's base is built, split and cached as it should be."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sampler
import tasks
import tiny
from tiny_model import make_tiny_checkpoint

CHATML_HI = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nhi<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint)


def test_checkpoint_loads_with_auto_classes(checkpoint, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.tie_word_embeddings


def test_chat_template_is_chatml(tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == CHATML_HI
    with_system = [{"role": "system", "content": "Be brief."}] + messages + [{"role": "assistant", "content": "yo"}]
    assert tokenizer.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nyo<|im_end|>\n"
    )


def test_chat_template_without_default_system_prompt():
    tokenizer = tiny.build_tokenizer(default_system_prompt=None)
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_special_token_ids(checkpoint, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == im_end
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == endoftext
    assert im_end != endoftext
    assert model.config.eos_token_id == im_end
    assert model.config.pad_token_id == endoftext
    assert model.generation_config.eos_token_id == [im_end, endoftext]
    assert model.generation_config.pad_token_id == endoftext
    # Special tokens are single tokens, never split into bytes.
    ids = tokenizer.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[-1] == im_end


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return {'a': x ** 2}  # comment\n\tpass\n",
        "naïve café, 日本語, emoji 🙂, Ω≈ç√",
        "1234567890 * 987 = 1218518501430",
        "  leading spaces\r\n\r\ntrailing  ",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_digits_are_one_token_each(tokenizer):
    tokens = tokenizer.tokenize("37 * 1234")
    digit_tokens = [token for token in tokens if any(ch.isdigit() for ch in token)]
    assert digit_tokens == ["3", "7", "1", "2", "3", "4"]


def test_random_model_is_deterministic(tmp_path):
    first = AutoModelForCausalLM.from_pretrained(make_tiny_checkpoint(tmp_path / "a", seed=3))
    second = AutoModelForCausalLM.from_pretrained(make_tiny_checkpoint(tmp_path / "b", seed=3))
    for p, q in zip(first.parameters(), second.parameters()):
        assert (p == q).all()


# ----------------------------------------------------------------------------- tiny pretrained base (cheap checks)


def test_sample_problem_distribution():
    rng = random.Random(0)
    for _ in range(200):
        question, answer = tiny.sample_problem(rng)
        a, b = tiny.parse_operands(question)
        assert 10 <= a <= 999 and 2 <= b <= 9 and a * b == answer


def test_heldout_problems_never_come_from_training_pairs():
    heldout = tiny.heldout_problems()
    assert len(heldout) == 500 and len(set(heldout)) == 500  # 500 distinct problems, not 500 draws
    assert heldout == tiny.heldout_problems()  # deterministic
    heldout_pairs = {frozenset(tiny.parse_operands(q)) for q, _ in heldout}
    rng = random.Random(0)
    training_pairs = {frozenset(tiny.parse_operands(tiny.sample_training_problem(rng)[0])) for _ in range(5000)}
    assert not heldout_pairs & training_pairs
    validation_pairs = {frozenset(tiny.parse_operands(q)) for q, _ in tiny.validation_problems()}
    assert not heldout_pairs & validation_pairs and not validation_pairs & training_pairs
    # The split is by unordered pair: the swapped question is held out too.
    assert tiny.problem_bucket("37 * 52") == tiny.problem_bucket("52 * 37")


def test_solver_completion_format():
    from rewards import extract_answer

    quick = tiny.solver_completion("372 * 8", 2976, worked=False)
    assert quick == "<think> 372 * 8 = 2976 </think> <answer> 2976 </answer>"
    worked = tiny.solver_completion("372 * 8", 2976, worked=True)
    assert worked == (
        "<think> 372 * 8 = 300 * 8 + 70 * 8 + 2 * 8 = 2400 + 560 + 16 = 2976 </think> <answer> 2976 </answer>"
    )
    # Zero digits add no partial product.
    assert tiny.solver_completion("305 * 4", 1220, worked=True).startswith("<think> 305 * 4 = 300 * 4 + 5 * 4 = ")
    assert extract_answer(quick) == extract_answer(worked) == "2976"


def test_every_solution_fits_the_response_budget():
    """A completion cut off by the sampling budget loses its <answer>: the budget must fit the longest one."""
    tokenizer = tiny.base_tokenizer()
    longest = max(
        len(tokenizer.encode(tiny.solver_completion(f"{a} * {b}", a * b, worked=True), add_special_tokens=False))
        for a in tiny.UNIFORM.multiplicands
        for b in tiny.MULTIPLIERS
    )
    assert longest + 1 <= tiny.MAX_NEW_TOKENS  # + 1 for the closing <|im_end|>


def test_teacher_forced_match_accepts_either_style():
    """Pretraining's progress check counts a problem solved when greedy decoding writes either gold style."""
    tokenizer = tiny.base_tokenizer()
    torch.manual_seed(0)
    model = tiny.Qwen2ForCausalLM(tiny.qwen2_config(tokenizer, 32, 1, 2, 1, 64)).eval()
    problem = ("372 * 8", 2976)
    assert tiny.teacher_forced_exact_match(model, tokenizer, [problem]) == 0.0  # random weights solve nothing
    # Teach the model one style of this one problem by heart; the check must then count it, whichever style.
    for worked in (False, True):
        torch.manual_seed(0)
        model = tiny.Qwen2ForCausalLM(tiny.qwen2_config(tokenizer, 32, 1, 2, 1, 64))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        example = tiny.transcript_ids(
            tokenizer, tiny.solver_prompt_text(problem[0]), tiny.solver_completion(*problem, worked=worked)
        )
        batch = tiny.pad_batch([example], tokenizer.pad_token_id)
        for _ in range(100):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        assert tiny.teacher_forced_exact_match(model, tokenizer, [problem]) == 1.0, f"worked={worked}"


def test_transcripts_use_the_project_prompts():
    tokenizer = tiny.base_tokenizer()
    completion = tiny.solver_completion("37 * 8", 296, worked=False)
    ids, labels = tiny.transcript_ids(tokenizer, tiny.solver_prompt_text("37 * 8"), completion)
    text = tokenizer.decode(ids)
    solver_prompt = tasks.read_prompt("math_solver").replace("{question}", "37 * 8")
    assert text == f"<|im_start|>user\n{solver_prompt}<|im_end|>\n<|im_start|>assistant\n" + (
        "<think> 37 * 8 = 296 </think> <answer> 296 </answer><|im_end|>"
    )
    # Loss only on the reply and its closing <|im_end|>.
    reply = tokenizer.decode([token for token in labels if token != -100])
    assert reply == "<think> 37 * 8 = 296 </think> <answer> 296 </answer><|im_end|>"
    # Every solver transcript starts with the shared prefix that training runs once per batch.
    assert ids[: len(tiny.solver_prefix_ids(tokenizer))] == tiny.solver_prefix_ids(tokenizer)

    proposer_ids, proposer_labels = tiny.transcript_ids(tokenizer, tiny.proposer_prompt_text(), "37 * 8")
    proposer_prompt = tasks.read_prompt("multiplication_proposer")
    expected = f"<|im_start|>user\n{proposer_prompt}<|im_end|>\n<|im_start|>assistant\n37 * 8<|im_end|>"
    assert tokenizer.decode(proposer_ids) == expected


def test_shared_prefix_forward_matches_plain_forward():
    tokenizer = tiny.base_tokenizer()
    torch.manual_seed(0)
    model = tiny.Qwen2ForCausalLM(tiny.qwen2_config(tokenizer, 32, 1, 2, 1, 64)).eval()
    problems = [("37 * 8", 296, False), ("372 * 8", 2976, True)]
    examples = [
        tiny.transcript_ids(tokenizer, tiny.solver_prompt_text(q), tiny.solver_completion(q, a, worked))
        for q, a, worked in problems
    ]
    prefix = tiny.solver_prefix_ids(tokenizer)
    with torch.no_grad():
        logits, labels = tiny.shared_prefix_forward(model, prefix, examples, tokenizer.pad_token_id)
        shared_loss, tokens = tiny.summed_token_loss(logits, labels)
        plain_loss = model(**tiny.pad_batch(examples, tokenizer.pad_token_id)).loss
    assert torch.allclose(shared_loss / tokens, plain_loss, atol=1e-5)


TINY_SIZES = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def small_base(path):
    """A tiny base after a few pretraining steps only (the real build takes minutes): the pipeline, not the skill."""
    return tiny.pretrain_tiny_base(path, max_steps=2, eval_every=1, batch_size=8, log=lambda line: None, **TINY_SIZES)


def test_tiny_base_builds_saves_and_loads(tmp_path, monkeypatch):
    path = small_base(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen2"
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # the base has no default system turn
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.pad_token_id]
    # The response budget travels with the model: sqlm.py and evaluate.py use it unless told otherwise.
    assert tasks.max_new_tokens("multiplication", model) == tiny.MAX_NEW_TOKENS
    assert tasks.max_new_tokens("multiplication", model, requested=12) == 12

    # load_or_build reuses a finished build in the cache instead of training again, adds its data files, and
    # links `tiny` to it, so --model tiny loads it.
    monkeypatch.setenv("SQLM_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / tiny.UNIFORM.cache_name
    cached.parent.mkdir()
    path.rename(cached)
    # A base built by an older tiny.py has the same weights but no budget in its generation config: it gets it.
    config = json.loads((cached / "generation_config.json").read_text())
    del config["max_new_tokens"]
    (cached / "generation_config.json").write_text(json.dumps(config))
    assert tiny.load_or_build_tiny_base() == cached
    assert json.loads((cached / "generation_config.json").read_text())["max_new_tokens"] == tiny.MAX_NEW_TOKENS
    test = tasks.load_problems("multiplication", data=str(cached / "test.jsonl"))
    validation = tasks.load_problems("multiplication", data=str(cached / "validation.jsonl"))
    assert [(p["question"], int(p["answer"])) for p in test] == tiny.heldout_problems()
    assert len(validation) == 256 and not {p["question"] for p in test} & {p["question"] for p in validation}
    assert sampler.model_location("tiny") == str(tmp_path / "cache" / "tiny")
    assert sampler.load_model("tiny", torch.device("cpu"))[0].config.hidden_size == TINY_SIZES["hidden_size"]


def test_concurrent_first_builds_wait_for_each_other(tmp_path):
    """Two first runs at once: one builds, the other waits for it and uses its build (no race, no second build)."""
    script = (
        "import sys, time, tiny\n"
        "def build(path, recipe, log=print):\n"
        "    print('FAKE-BUILD', flush=True)\n"
        "    time.sleep(1.5)\n"
        "    path.mkdir(parents=True)\n"
        "    (path / 'config.json').write_text('{}')\n"
        "    (path / 'generation_config.json').write_text('{}')\n"
        "tiny.pretrain_tiny_base = build\n"
        "print(tiny.load_or_build_tiny_base(), flush=True)\n"
    )
    env = {**os.environ, "SQLM_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(tiny.Path(tiny.__file__).parent)}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert sum(output.count("FAKE-BUILD") for output in outputs) == 1
    assert all(output.strip().endswith(tiny.UNIFORM.cache_name) for output in outputs)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == \
        sorted([tiny.UNIFORM.cache_name, "tiny"])  # no partial build left behind


def test_shared_prefix_forward_scores_the_first_reply_token():
    """The proposer's prefix is its whole prompt but the last token, so the proposal's first token is trained."""
    tokenizer = tiny.base_tokenizer()
    torch.manual_seed(0)
    model = tiny.Qwen2ForCausalLM(tiny.qwen2_config(tokenizer, 32, 1, 2, 1, 64)).eval()
    examples = [tiny.transcript_ids(tokenizer, tiny.proposer_prompt_text(), "37 * 8")]
    full_prompt = sampler.chat_prompt_ids(tokenizer, tiny.proposer_prompt_text())
    with pytest.raises(AssertionError):
        tiny.shared_prefix_forward(model, full_prompt, examples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits, labels = tiny.shared_prefix_forward(model, full_prompt[:-1], examples, tokenizer.pad_token_id)
        shared_loss, tokens = tiny.summed_token_loss(logits, labels)
        plain_loss = model(**tiny.pad_batch(examples, tokenizer.pad_token_id)).loss
    assert tokens == len(tokenizer.encode("37 * 8", add_special_tokens=False)) + 1
    assert torch.allclose(shared_loss / tokens, plain_loss, atol=1e-5)


def test_question_rung():
    assert [tiny.question_rung(q) for q in ("7 * 8", "37 * 8", "8 * 37", "372 * 8", "3720 * 8", "37 * 1", "x", None)] \
        == [1, 2, 2, 3, None, None, None, None]


def test_ladder_recipe_splits_and_role_mixes():
    """The curriculum demo's base: held-out problems per rung, never from training pairs; the proposer is
    pretrained mostly on the times table, the solver mostly on the hard rung."""
    ladder = tiny.LADDER
    heldout, validation = tiny.heldout_problems(ladder), tiny.validation_problems(ladder)
    rungs = [tiny.question_rung(q) for q, _ in heldout]
    assert (rungs.count(1), rungs.count(2), rungs.count(3)) == (11, 71, 400) and len(set(heldout)) == 482
    pairs = lambda problems: {frozenset(tiny.parse_operands(q)) for q, _ in problems}  # noqa: E731
    assert not pairs(heldout) & pairs(validation)
    rng = random.Random(0)
    for weights, rung, low, high in ((ladder.proposer_weights, 1, 0.75, 0.85), (ladder.solver_weights, 3, 0.55, 0.65)):
        drawn = [tiny.sample_training_problem(rng, ladder, weights) for _ in range(2000)]
        assert not pairs(drawn) & (pairs(heldout) | pairs(validation))
        assert low < [tiny.question_rung(q) for q, _ in drawn].count(rung) / 2000 < high
    assert tiny.solver_completion("7 * 8", 56, worked=True) == "<think> 7 * 8 = 56 </think> <answer> 56 </answer>"

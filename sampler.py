"""Model loading and the hand-written batched sampler: the machinery sqlm.py samples with.

    model, tokenizer = load_model("Qwen/Qwen2.5-0.5B-Instruct", torch.device("cuda"), torch.bfloat16)
    completions = sample(model, prompts, max_new_tokens=1024, temperature=1.0, stop_ids=stop_token_ids(...))

Why hand-written: RL samples hundreds of sequences per step, and `model.generate` spends most of that time
in Python bookkeeping. Here prompts are left-padded so every row's next token goes to the same cache slot;
position ids come from the attention mask, so padding never shifts a row's positions; the KV cache is
allocated for the whole batch up front (no per-token concatenation); once half the rows have finished, the live
rows are copied into a smaller cache and the decoder is rebuilt (so finished rows stop costing compute); and on
CUDA each decode step is replayed from a captured CUDA graph (one launch instead of hundreds of kernels; a
compacted batch captures graphs of its own). The decoder layer itself is
written out in `forward_with_cache` for Qwen2/Llama-style models. This module imports no other project file.
"""

import os
import socket
import urllib.parse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

# ============================================================================ loading


def cache_dir() -> Path:
    """Where sqlm keeps models it builds itself (the CPU demo's): $SQLM_CACHE, else ~/.cache/sqlm."""
    return Path(os.environ.get("SQLM_CACHE") or Path.home() / ".cache" / "sqlm")


def model_location(name_or_path: str) -> str:
    """A local directory as given; else a model of that name built into the sqlm cache (`tiny`: the CPU demo's
    model, which demo.py builds); else the name itself, for the hub."""
    cached = cache_dir() / name_or_path
    if not Path(name_or_path).is_dir() and "/" not in name_or_path and cached.is_dir():
        return str(cached)
    return name_or_path


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the model hub ($HF_ENDPOINT)? Asked before downloading, because
    from_pretrained retries an unreachable hub for about a minute before it gives up."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
        return False
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_model(name_or_path: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer from a local directory or a hub name -> (model, tokenizer)."""
    name_or_path = model_location(name_or_path)
    path = Path(name_or_path).expanduser()
    # "org/name" is a hub id; anything else with a slash (or ~, .) is a path, and a missing path is not looked up
    # on the hub.
    if path.is_dir() or name_or_path.startswith((".", "~", os.sep)) or name_or_path.count("/") > 1:
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: {name_or_path!r} is not a model directory (no config.json there); pass "
                             "--model a directory written by save_pretrained, or a hub name.")
        name_or_path = str(path)
        for file in (file for file in path.iterdir() if file.is_file()):  # the library says "No such file" instead
            try:
                file.open("rb").close()
            except OSError as error:
                raise SystemExit(f"error: cannot read {str(file)!r} ({error.strerror}); make the model's files "
                                 "readable, or pass another --model.") from None
    offline = False
    try:
        try:  # the local directory or the Hugging Face cache first: no network, no retries
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, local_files_only=True)
        except OSError:
            offline = not path.is_dir() and not hub_reachable()
            if path.is_dir() or offline:
                raise
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # RuntimeError: weights of the wrong shape
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        if "mismatched_sizes" in reason:  # transformers has just printed which weights
            reason = "weights of other shapes than its config.json gives, listed above"
        if offline:
            reason = "not in the local Hugging Face cache, and the hub cannot be reached from here"
        raise SystemExit(f"error: could not load model {name_or_path!r} ({reason}); pass --model a local "
                         "checkpoint directory, or a hub name on a machine that can reach the hub.") from None
    if not tokenizer.chat_template:
        raise SystemExit(f"error: model {name_or_path!r} has no chat template; SQLM prompts both roles through one, "
                         "so use a chat (Instruct) model.")
    model = model.to(device)
    problem = sampler_mismatch(model, tokenizer)
    if problem:
        raise SystemExit(f"error: model {name_or_path!r} (model_type {model.config.model_type!r}) cannot be sampled "
                         f"by sqlm's hand-written decoder: {problem}; use a Qwen2, Qwen2.5, Qwen3 or Llama-style "
                         "model (the README's section 'Which models').")
    return model, tokenizer


def load_for_training(initial: str, *, weights: str, device: torch.device, with_reference: bool,
                      gradient_checkpointing: bool = False):
    """The models one training run holds -> (policy, sampling copy, frozen reference or None, tokenizer).

    The policy keeps fp32 master weights: bf16 Adam at lr 1e-6 would round most updates away. On CUDA it samples
    from a bf16 copy (half the memory traffic per token; refreshed by copy_weights after each update), and the
    KL reference is a frozen bf16 copy of the *initial* model; on CPU everything is fp32 and the policy samples
    itself. `weights` is where training starts (the initial model, or the checkpoint being resumed)."""
    policy, tokenizer = load_model(weights, device)
    low_precision = torch.bfloat16 if device.type == "cuda" else torch.float32
    reference = load_model(initial, device, low_precision)[0].eval() if with_reference else None
    sampling = load_model(weights, device, low_precision)[0].eval() if device.type == "cuda" else policy
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    policy.config.use_cache = False  # training forwards never need the library's KV cache
    return policy, sampling, reference, tokenizer


@torch.no_grad()
def copy_weights(source, target) -> None:
    """Copy the fp32 master weights into the bf16 sampling copy after each update."""
    for target_param, source_param in zip(target.parameters(), source.parameters()):
        target_param.copy_(source_param)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS (<|im_end|> for Qwen chat) and generation_config's."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def pad_token_id(tokenizer, stop_ids: list[int]) -> int:
    """The id written into padding slots: the tokenizer's pad token, else a stop token (padding is masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def chat_prompt_ids(tokenizer, user_message: str, system_message: str | None = None) -> list[int]:
    """A user turn (after a system turn, if given) through the model's chat template, ending with the assistant
    header. Without a system turn the template adds its default one (Qwen2.5: "You are Qwen, ...").

    enable_thinking=False: Qwen3's template would otherwise let the model open a long native <think> block of its
    own; SQLM's prompts ask for their own format (the math solver's <think>/<answer> tags) within a budget meant for
    instruct models, so both roles get Qwen3's non-thinking mode. Templates without the switch ignore it."""
    messages = [{"role": "user", "content": user_message}]
    if system_message is not None:
        messages.insert(0, {"role": "system", "content": system_message})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ============================================================================ the decoder, written out


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
        q = attention.q_proj(x).view(batch, length, -1, attention.head_dim)  # [B, T, heads, D]
        k = attention.k_proj(x).view(batch, length, -1, attention.head_dim)  # [B, T, kv_heads, D]
        v = attention.v_proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)  # [B, kv_heads, T, D]
        if hasattr(attention, "q_norm"):  # Qwen3: an RMSNorm over each head's query and key, before the rotation
            q, k = attention.q_norm(q), attention.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, heads, T, D], [B, kv_heads, T, D]
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
    """Allocate the whole cache for `max_len` tokens up front: no per-token concatenation. (`sample` replaces it
    by a smaller copy when half the rows have finished.)"""
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


# ============================================================================ sampling


def pick_tokens(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids: greedy at temperature 0, else a sample from softmax(logits / T).

    Sampling uses the exponential race (argmax of probs / Exp(1) noise, same distribution as multinomial)
    with noise drawn for the whole original batch, so a row's sample does not depend on which other rows
    are still running."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V] in fp32: bf16 probs are too coarse
    return (probs / noise).argmax(dim=-1)


def prefill(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int = 0):
    """Left-pad the prompts, allocate the KV cache for max_new_tokens more tokens, and run every prompt token at
    once -> (next-token logits [B, V], cache, key_is_token [B, P + max_new_tokens], positions [B, P]).
    Left padding: every prompt ends at slot P - 1, so all rows write their next token to the same slot."""
    device = model.lm_head.weight.device
    batch, prompt_len = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((batch, prompt_len), pad_id, dtype=torch.long)
    key_is_token = torch.zeros((batch, prompt_len + max_new_tokens), dtype=torch.bool)  # slot holds a real token
    for row, ids in enumerate(prompts):
        input_ids[row, prompt_len - len(ids):] = torch.tensor(ids)
        key_is_token[row, prompt_len - len(ids):prompt_len] = True
    input_ids, key_is_token = input_ids.to(device), key_is_token.to(device)
    positions = (key_is_token[:, :prompt_len].long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
    cache = new_kv_cache(model, batch, prompt_len + max_new_tokens)
    # A padding query sees only itself (an all-masked row would give NaN); real ones see the tokens before them.
    slots = torch.arange(prompt_len, device=device)  # [P]
    causal = slots[None, :] <= slots[:, None]  # [P, P]
    itself = torch.eye(prompt_len, dtype=torch.bool, device=device)  # [P, P]
    mask = causal & (key_is_token[:, None, None, :prompt_len] | itself)  # [B, 1, P, P]
    logits = forward_with_cache(model, cache, input_ids, positions, mask, slots)  # [B, V]
    return logits, cache, key_is_token, positions


@torch.no_grad()
def sample(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, stop_ids: list[int],
           pad_id: int = 0, cuda_graph: bool = True, compact: bool = True) -> list[list[int]]:
    """Complete every prompt; each completion keeps the stop token that ended it (if it stopped)."""
    device = model.lm_head.weight.device
    batch, prompt_len = len(prompts), max(len(p) for p in prompts)
    logits, cache, key_is_token, positions = prefill(model, prompts, max_new_tokens, pad_id)
    stop = torch.tensor(stop_ids, device=device)
    use_graph = cuda_graph and device.type == "cuda"

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


def micro_batches(sequences: list, token_budget: int, length) -> list[list]:
    """The training forwards' memory counterpart of sample_in_chunks: group sequences of similar `length(seq)` so
    that rows x padded length stays within the token budget (sqlm.update_policy's micro-batches)."""
    batches, current = [], []
    for sequence in sorted(sequences, key=length):
        if current and (len(current) + 1) * length(sequence) > token_budget:  # the longest so far, since sorted
            batches.append(current)
            current = []
        current.append(sequence)
    return batches + [current] if current else batches


# ============================================================================ the self-check at load time


# The self-check's tolerance on the largest logit difference, relative to the largest logit. Measured on tiny
# random models of every supported family (README, "Which models"): float32 agrees to rounding (<= 2e-6); in
# bfloat16 (8 bits of mantissa) the two forwards round differently and differ by up to 1e-2. A missing piece of the
# architecture moves the logits by far more: 0.39 to 1.1 for Qwen3 without its query/key norms, 8 to 10 for
# Granite's multipliers. The bounds sit between the two, with room for deeper real models.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


@torch.no_grad()
def sampler_mismatch(model, tokenizer) -> str | None:
    """Why the hand-written decoder cannot stand in for this model, or None when it reproduces it.

    Both forwards run on the same two short prompts (of different lengths, so left padding is exercised), in the
    dtype the model was loaded in: the prompt (prefill) and one decode step through the KV cache must give the
    model's own next-token logits, within SELF_CHECK_TOLERANCE. A layer the decoder cannot read is a mismatch
    too. Costs three short forwards: milliseconds on a GPU, about a second for 0.5B on 2 CPU cores."""
    config = model.config
    layer_kinds = set(getattr(config, "layer_types", None) or ())  # newer configs name each layer's attention
    if layer_kinds - {"full_attention"} or not layer_kinds and getattr(config, "sliding_window", None) and \
            getattr(config, "use_sliding_window", True):
        return "it uses sliding-window attention, which the decoder does not implement"
    was_training = model.training
    model.eval()
    try:
        worst = largest_logit_difference(model, tokenizer)
    except Exception as error:  # the decoder met a layer it cannot read (fused projections, other names, ...)
        return f"its layers do not have the Qwen2/Llama layout the decoder reads ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    tolerance = SELF_CHECK_TOLERANCE.get(model.lm_head.weight.dtype, 5e-2)
    if not worst <= tolerance:  # `not <=` also catches NaN
        return f"its next-token logits differ from the model's own by {worst:.2g} (relative; tolerance {tolerance:g})"
    return None


def largest_logit_difference(model, tokenizer) -> float:
    """max |decoder - model| / max |model| over the next-token logits of two short prompts, after the prompt
    (prefill) and after one more token (a decode step through the KV cache)."""
    # Short plain texts, not chat prompts: the layers are what is checked, and a dozen tokens keep it cheap.
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("What is 12 * 34? It is", "Hi")]
    first, cache, key_is_token, positions = prefill(model, prompts, 1)  # [2, V]
    next_tokens = first.argmax(-1)  # [2]
    slot = key_is_token.shape[1] - 1
    key_is_token[:, slot] = True
    decode = make_decoder(model, cache, key_is_token, use_cuda_graph=False)
    second = decode(next_tokens, positions[:, -1:] + 1, slot)  # [2, V]
    worst = 0.0
    for row, prompt in enumerate(prompts):  # the model's own forward, one unpadded row at a time
        ids = torch.tensor([prompt + [next_tokens[row].item()]], device=first.device)
        theirs = model(input_ids=ids).logits[0, -2:].float()  # [2, V]: after the prompt, after the extra token
        ours = torch.stack([first[row], second[row]]).float()  # [2, V]
        worst = max(worst, ((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-6)).item())
    return worst

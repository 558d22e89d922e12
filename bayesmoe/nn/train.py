"""Training loop for TransformerLM: Adam + cosine decay + clipping, k schedule, BPC eval,
orbax checkpoint save/resume, tqdm progress and JSON metrics.

Recipe (HyperRouter, arXiv 2312.07035, Sec. 4.1, following SMoE-Dropout, arXiv
2303.01610): Adam, learning rate 2.5e-4 with cosine decay, global-norm clipping 0.25,
and the number of active experts k growing linearly during training from ``k_min`` to
``k_max`` (:func:`k_schedule`); each trained model is then evaluated at several k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from bayesmoe.nn.data import eval_windows, sample_windows
from bayesmoe.nn.transformer import TransformerLM

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (see the module docstring for the recipe).

    :ivar steps: total optimisation steps S (also the length of the cosine decay and of
        the k schedule).
    :ivar batch_size: sequences per batch.
    :ivar seq_len: tokens per training sequence (windows sampled at random from the
        data).
    :ivar learning_rate: peak Adam learning rate (2.5e-4 in the recipe).
    :ivar warmup_steps: linear warm-up steps before the cosine decay (0: none).
    :ivar clip_norm: global-norm gradient clipping threshold (0.25 in the recipe).
    :ivar k_min: number of active experts at the start of the k schedule (None: the
        model's own ``top_k`` throughout).
    :ivar k_max: number of active experts at the end of the k schedule (None:
        ``k_min``).
    :ivar seed: seed of the batch sampling (same seed, same batches).
    :ivar log_every: steps between entries of the metrics history.
    :ivar checkpoint_dir: directory of the orbax checkpoints (None: no checkpoints; a
        run resumes from the latest one found there).
    :ivar checkpoint_every: steps between checkpoints (0: none, only with
        ``checkpoint_dir``).
    :ivar progress: show a tqdm progress bar.
    :ivar metrics_path: a JSON file the final result (history and validation BPC) is
        written to, or None.
    :ivar stop_at: end this call early at this step (for chunked or preempted jobs;
        resume later from the checkpoint), or None.
    """

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    learning_rate: float = 2.5e-4
    warmup_steps: int = 0
    clip_norm: float = 0.25
    k_min: int | None = None  # None: the model's own top_k throughout
    k_max: int | None = None
    seed: int = 0
    log_every: int = 50
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    progress: bool = True
    metrics_path: str | None = None
    stop_at: int | None = None  # end this call early at this step (chunked/preempted jobs)


def k_schedule(step: int, total_steps: int, k_min: int, k_max: int) -> int:
    """Linear k schedule (SMoE-Dropout): ``k_min + floor((k_max - k_min + 1) s / S)``,
    capped at ``k_max``; each of the ``k_max - k_min + 1`` values gets an equal share.

    :param step: the current step s (0-based).
    :param total_steps: the total number of steps S.
    :param k_min: k at the start.
    :param k_max: k at the end (>= ``k_min``).
    """
    if not 1 <= k_min <= k_max:
        raise ValueError(f"k_min, k_max must satisfy 1 <= k_min <= k_max, got {k_min}, {k_max}")
    frac = min(max(step, 0), total_steps) / max(total_steps, 1)
    return min(k_max, k_min + math.floor((k_max - k_min + 1) * frac))


def k_schedule_reference(step: int, total_steps: int, k_min: int, k_max: int) -> int:
    """The authors' ``linear_increase``: ``clip(round((k_max - k_min) s / S) + k_min)``
    with Python's ``round`` (half to even), so k_min and k_max get half shares (e.g. 8 -> 16
    over S steps: k = 8 for the first S / 16 steps, k = 16 for the last S / 16)."""
    if not 1 <= k_min <= k_max:
        raise ValueError(f"k_min, k_max must satisfy 1 <= k_min <= k_max, got {k_min}, {k_max}")
    k = round((k_max - k_min) * max(step, 0) / max(total_steps, 1)) + k_min
    return int(min(max(k, k_min), k_max))


@functools.lru_cache(maxsize=32)
def _transform(lr: float, warmup: int, steps: int, clip: float) -> optax.GradientTransformation:
    # cached so that equal configs give the *same* object: the optimizer's graphdef (which
    # holds ``tx``) then matches and the jitted train step is not recompiled per run
    if warmup > 0:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
    else:
        schedule = optax.cosine_decay_schedule(lr, steps)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule))


def make_optimizer(model: nnx.Module, config: TrainConfig) -> nnx.Optimizer:
    """``clip_by_global_norm`` then Adam with (warmup +) cosine decay, on ``nnx.Param`` only.

    :param model: the ``nnx.Module`` to optimise.
    :param config: the :class:`TrainConfig` (``learning_rate``, ``warmup_steps``,
        ``steps``, ``clip_norm``).
    """
    tx = _transform(float(config.learning_rate), int(config.warmup_steps), int(config.steps),
                    float(config.clip_norm))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def lm_loss(model: TransformerLM, tokens: Array, top_k: int | None):
    """Mean next-token cross-entropy (nats) + the weighted MoE aux loss."""
    logits, aux = model(tokens[:, :-1], top_k=top_k)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return ce + aux.loss, (ce, aux)


@nnx.jit(static_argnames=("top_k",))
def train_step(model: TransformerLM, optimizer: nnx.Optimizer, tokens: Array, top_k: int):
    """One optimizer step; returns a dict of scalar metrics."""
    grad_fn = nnx.value_and_grad(lambda m: lm_loss(m, tokens, top_k), has_aux=True)
    (loss, (ce, aux)), grads = grad_fn(model)
    optimizer.update(model, grads)
    return {"loss": loss, "ce": ce, "entropy": aux.entropy, "balance": aux.balance_loss,
            "grad_norm": optax.tree.norm(grads)}


@nnx.jit(static_argnames=("top_k",))
def _eval_step(model: TransformerLM, tokens: Array, weight: Array, top_k: int):
    logits, aux = model(tokens[:, :-1], top_k=top_k)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.sum(nll.sum(-1) * weight), aux.layer_entropy


def evaluate_bpc(
    model: TransformerLM,
    data: np.ndarray,
    ks: tuple[int, ...] | list[int],
    seq_len: int = 128,
    batch_size: int = 32,
    max_tokens: int | None = None,
) -> dict:
    """Bits per character of ``data`` at each k: ``sum nll / (n ln 2)`` over
    non-overlapping windows (each window's context starts fresh).  Also the mean router
    entropy, over layers and per layer.  Returns ``{"bpc": {k: .}, "entropy": {k: .},
    "layer_entropy": {k: [.]}, "tokens": n}``.

    :param model: the :class:`TransformerLM`.
    :param data: the token ids (1-D integer array).
    :param ks: the numbers of active experts to evaluate at.
    :param seq_len: window length.
    :param batch_size: windows per evaluation batch.
    :param max_tokens: score at most this many tokens (None: all).
    """
    model.eval()
    win = eval_windows(np.asarray(data), seq_len, max_tokens)
    n_win = len(win)
    pad = (-n_win) % batch_size
    win = np.concatenate([win, np.repeat(win[:1], pad, axis=0)])
    weight = np.concatenate([np.ones(n_win), np.zeros(pad)]).astype(np.float32)
    out = {"bpc": {}, "entropy": {}, "layer_entropy": {}, "tokens": int(n_win * seq_len)}
    for k in ks:
        total, ent = 0.0, []
        for i in range(0, len(win), batch_size):
            s, e = _eval_step(model, jnp.asarray(win[i : i + batch_size]),
                              jnp.asarray(weight[i : i + batch_size]), top_k=int(k))
            total += float(s)
            ent.append(np.asarray(e))
        out["bpc"][int(k)] = total / (n_win * seq_len * math.log(2))
        per_layer = np.mean(ent, axis=0)
        out["layer_entropy"][int(k)] = [float(v) for v in per_layer]
        out["entropy"][int(k)] = float(per_layer.mean())
    model.train()
    return out


def _ckpt_state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict:
    """Everything that changes during training, as pure dicts (PRNG keys are fixed by
    the seed and rebuilt with the model, their counters are saved)."""
    return {
        "model": nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.RngKey))),
        "opt": nnx.to_pure_dict(nnx.state(optimizer, nnx.Not(nnx.RngKey))),
    }


def _checkpoint_manager(directory: str | Path):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=opts)


def save_checkpoint(directory: str | Path, step: int, model, optimizer, history: list) -> None:
    """Save model + optimizer state at ``step`` (orbax) and the history so far (JSON).

    :param directory: the checkpoint directory.
    :param step: the step number of this checkpoint.
    :param model: the model whose state is saved.
    :param optimizer: the ``nnx.Optimizer`` whose state is saved.
    :param history: the metrics history so far (written as ``history.json``).
    """
    import orbax.checkpoint as ocp

    with _checkpoint_manager(directory) as mngr:
        mngr.save(step, args=ocp.args.StandardSave(_ckpt_state(model, optimizer)), force=True)
        mngr.wait_until_finished()
    (Path(directory) / "history.json").write_text(json.dumps(history))


def restore_checkpoint(directory: str | Path, model, optimizer) -> tuple[int, list]:
    """Restore the latest checkpoint in place; returns (step, history), (0, []) if none.

    :param directory: the checkpoint directory.
    :param model: the model, updated in place.
    :param optimizer: the ``nnx.Optimizer``, updated in place.
    """
    import orbax.checkpoint as ocp

    if not Path(directory).exists():
        return 0, []
    with _checkpoint_manager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            return 0, []
        target = _ckpt_state(model, optimizer)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    for obj, key in ((model, "model"), (optimizer, "opt")):
        state = nnx.state(obj, nnx.Not(nnx.RngKey))
        nnx.replace_by_pure_dict(state, restored[key])
        nnx.update(obj, state)
    hist_path = Path(directory) / "history.json"
    history = json.loads(hist_path.read_text()) if hist_path.exists() else []
    return int(step), [h for h in history if h["step"] <= step]


def _loop(model, optimizer, train_data, config, bar, k_min, k_max, mesh, history, end):
    """The step loop of :func:`train` (logging every ``log_every``, checkpoints)."""
    from bayesmoe.nn.sharding import shard_batch

    t0 = time.perf_counter()
    pending = []
    for step in bar:
        k = k_schedule(step, config.steps, k_min, k_max)
        batch = sample_windows(train_data, config.batch_size, config.seq_len, config.seed, step)
        batch = jnp.asarray(batch) if mesh is None else shard_batch(batch, mesh)
        pending.append((step + 1, k, train_step(model, optimizer, batch, top_k=k)))
        done = step + 1
        if done % config.log_every == 0 or done == end:
            for s, kk, m in pending:
                rec = {"step": s, "k": kk, **{n: float(v) for n, v in m.items()}}
                rec["time"] = time.perf_counter() - t0
                history.append(rec)
            pending = []
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", k=k)
        if config.checkpoint_dir and config.checkpoint_every and (
            done % config.checkpoint_every == 0 or done == end
        ):
            save_checkpoint(config.checkpoint_dir, done, model, optimizer, history)
    return history


def train(
    model: TransformerLM,
    train_data: np.ndarray,
    config: TrainConfig,
    *,
    valid_data: np.ndarray | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Train ``model`` in place; resumes from ``config.checkpoint_dir`` if it holds one.

    With ``mesh`` (axes "data" and optionally "expert", see :func:`make_mesh`) the
    model state is sharded by :func:`shard_model` and each batch is split over "data"
    (data-parallel step; experts sharded over "expert").

    Returns ``{"history": [per-log-step metrics], "step": final step, "valid": ...}``.

    :param model: the :class:`TransformerLM`, trained in place.
    :param train_data: the training token ids (1-D integer array).
    :param config: the :class:`TrainConfig`.
    :param valid_data: validation token ids: their BPC at ``k_max`` is computed at the
        end (None: skipped).
    :param mesh: a ``jax.sharding.Mesh`` for data/expert parallelism, or None (one
        device).
    """
    from bayesmoe.nn.sharding import shard_model

    default_k = model.moe_layers()[0].top_k if model.moe_layers() else 1
    k_min = config.k_min if config.k_min is not None else default_k
    k_max = config.k_max if config.k_max is not None else k_min
    optimizer = make_optimizer(model, config)
    start, history = 0, []
    if config.checkpoint_dir:
        start, history = restore_checkpoint(config.checkpoint_dir, model, optimizer)
    if mesh is not None:
        shard_model(model, mesh)
        shard_model(optimizer, mesh)
    model.train()
    end = config.steps if config.stop_at is None else min(config.steps, config.stop_at)
    bar = tqdm(range(start, end), total=config.steps, initial=start,
               disable=not config.progress, desc="train", mininterval=2.0)
    with contextlib.ExitStack() as stack:
        if mesh is not None:  # lets the layer's sharding constraints see the mesh axes
            stack.enter_context(jax.sharding.set_mesh(mesh))
        history = _loop(model, optimizer, train_data, config, bar, k_min, k_max, mesh,
                        history, end)
    bar.close()
    result = {"history": history, "step": max(start, end), "config": dataclasses.asdict(config)}
    if valid_data is not None:
        result["valid"] = evaluate_bpc(model, valid_data, [k_max], config.seq_len)
    if config.metrics_path:
        Path(config.metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.metrics_path).write_text(json.dumps(result, indent=1))
    return result

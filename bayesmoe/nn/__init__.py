"""bayesmoe.nn: sparse mixture-of-experts layers in Flax NNX (HyperRouter, SMoE, SMoE-Dropout).

Importing this package needs only jax, flax, optax (and orbax for checkpoints); it does not
import numpyro or arviz.
"""

from bayesmoe.nn.experts import DenseFFN, Experts, ExpertWeights
from bayesmoe.nn.layer import SparseMoE, top_k_gates
from bayesmoe.nn.losses import MoEAux, merge_aux, router_stats
from bayesmoe.nn.routers import HyperRouter, LinearRouter, RandomRouter, Router
from bayesmoe.nn.sharding import make_mesh, shard_batch, shard_layer, shard_model
from bayesmoe.nn.train import (
    TrainConfig,
    evaluate_bpc,
    k_schedule,
    make_optimizer,
    restore_checkpoint,
    save_checkpoint,
    train,
    train_step,
)
from bayesmoe.nn.transformer import TransformerLM
from bayesmoe.nn.transformer_xl import TransformerXL, XLMemory, evaluate_xl_bpc
from bayesmoe.nn.variables import Frozen

__all__ = [
    "DenseFFN",
    "ExpertWeights",
    "Experts",
    "Frozen",
    "HyperRouter",
    "LinearRouter",
    "MoEAux",
    "RandomRouter",
    "Router",
    "SparseMoE",
    "merge_aux",
    "router_stats",
    "top_k_gates",
    "TrainConfig",
    "TransformerLM",
    "TransformerXL",
    "XLMemory",
    "evaluate_xl_bpc",
    "evaluate_bpc",
    "k_schedule",
    "make_mesh",
    "make_optimizer",
    "restore_checkpoint",
    "save_checkpoint",
    "shard_batch",
    "shard_layer",
    "shard_model",
    "train",
    "train_step",
]

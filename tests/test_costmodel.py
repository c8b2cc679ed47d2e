"""The cost model (fastmvit.costmodel) on hand-checkable cases.

Each expected number is worked out by hand from the rules in the module docstring: an op reads
its inputs once and writes its outputs once, views are free, a custom op is one launch.
"""
import pytest
import torch
import torch.nn.functional as F

from fastmvit.costmodel import (FREE_OPS, MODEL_TARGETS, Traffic, TrafficCounter, count_traffic,
                                saved_activation_bytes, tensor_bytes, training_step_traffic)

F32 = 4


def test_linear_reads_input_weight_bias_and_writes_output():
    lin = torch.nn.Linear(6, 5)
    x = torch.randn(3, 4, 6)
    t = count_traffic(lin, x)
    assert t.launches == 1 and list(t.per_op) == ["aten.addmm"]
    assert t.bytes_read == (3 * 4 * 6 + 5 * 6 + 5) * F32
    assert t.bytes_written == 3 * 4 * 5 * F32
    assert t.flops == 2 * 12 * 6 * 5


def test_linear_on_meta_in_bf16_matches_the_same_formula():
    with torch.device("meta"):
        lin = torch.nn.Linear(96, 288).to(torch.bfloat16)
    x = torch.randn(8, 3137, 96, device="meta", dtype=torch.bfloat16)
    t = count_traffic(lin, x)
    assert t.launches == 1
    assert t.bytes == (8 * 3137 * 96 + 288 * 96 + 288 + 8 * 3137 * 288) * 2


def test_views_are_free_and_copies_are_not():
    x = torch.randn(2, 3, 5)
    free = count_traffic(lambda: x.view(6, 5).transpose(0, 1).unsqueeze(0)[:, 1:].permute(2, 0, 1))
    assert free.launches == 0 and free.bytes == 0
    copy = count_traffic(lambda: x.transpose(1, 2).contiguous())
    assert copy.launches == 1
    assert copy.bytes_read == copy.bytes_written == 2 * 3 * 5 * F32


def test_inplace_and_overwrite_and_out_arguments():
    x, y = torch.randn(4, 7), torch.randn(4, 7)
    n = 4 * 7 * F32
    t = count_traffic(lambda: x.add_(y))          # reads x and y, writes x
    assert (t.launches, t.bytes_read, t.bytes_written) == (1, 2 * n, n)
    t = count_traffic(lambda: x.copy_(y))         # overwrite: reads y only
    assert (t.bytes_read, t.bytes_written) == (n, n)
    t = count_traffic(lambda: x.fill_(3.0))
    assert (t.bytes_read, t.bytes_written) == (0, n)
    out = torch.empty(4, 7)
    t = count_traffic(lambda: torch.mul(x, y, out=out))   # out= is written, not read
    assert (t.bytes_read, t.bytes_written) == (2 * n, n)


def test_broadcast_and_repeated_inputs_are_read_once():
    x = torch.randn(9, 5)
    b = torch.randn(5)
    t = count_traffic(lambda: x + b.expand(9, 5))
    assert t.bytes_read == (9 * 5 + 5) * F32
    assert tensor_bytes(b.expand(9, 5)) == 5 * F32
    t = count_traffic(lambda: x * x)
    assert t.bytes_read == 9 * 5 * F32


def test_custom_op_counts_once_through_its_fake_on_meta():
    @torch.library.custom_op("fastmvit_costmodel_test::twice_plus", mutates_args=())
    def twice_plus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * 2 + b).contiguous()  # several aten ops inside, but one kernel to the model

    @twice_plus.register_fake
    def _(a, b):
        return torch.empty_like(a)

    a = torch.randn(3, 11, device="meta", dtype=torch.float16)
    b = torch.randn(3, 11, device="meta", dtype=torch.float16)
    t = count_traffic(twice_plus, a, b)
    assert list(t.per_op) == ["fastmvit_costmodel_test.twice_plus"]
    assert (t.launches, t.bytes_read, t.bytes_written) == (1, 2 * 33 * 2, 33 * 2)
    # on real CPU tensors the same: the op is dispatched once, its insides are not seen
    t = count_traffic(twice_plus, torch.randn(3, 11), torch.randn(3, 11))
    assert t.launches == 1


def test_saved_activation_bytes_of_a_known_module():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU())
    x = torch.randn(3, 4, 6)
    # addmm saves its input (for the weight gradient); GELU saves its input, the Linear output.
    assert saved_activation_bytes(model, x) == (3 * 4 * 6 + 3 * 4 * 5) * F32
    # with x requiring grad, addmm also saves the weight (for x's gradient): a parameter,
    # excluded unless asked for
    x.requires_grad_(True)
    assert saved_activation_bytes(model, x) == (72 + 60) * F32
    assert saved_activation_bytes(model, x, include_params=True) == (72 + 60 + 30) * F32


def test_saved_storage_counted_once_and_works_on_meta():
    x = torch.randn(5, 7, device="meta", requires_grad=True)
    # mul saves both operands, the same storage: counted once
    assert saved_activation_bytes(lambda t: t * t, x) == 5 * 7 * F32
    # softmax saves its output; exp saves its output too (another storage)
    assert saved_activation_bytes(lambda t: t.softmax(-1).exp(), x) == 2 * 5 * 7 * F32


def test_training_step_traffic_counts_forward_and_backward():
    lin = torch.nn.Linear(6, 5, bias=False)
    x = torch.randn(4, 6)
    step = training_step_traffic(lin, x)
    fwd_ops = {name: op.launches for name, op in step.forward.per_op.items()}
    assert fwd_ops == {"aten.mm": 1, "aten.sum": 1}          # float32 output: .float() is free
    bwd_ops = {name: op.launches for name, op in step.backward.per_op.items()}
    # seed of ones, expand of the sum's grad materialised by mm, and the weight gradient
    assert bwd_ops["aten.mm"] == 1 and bwd_ops.get("aten.ones_like") == 1
    assert step.total.launches == step.forward.launches + step.backward.launches
    assert step.total.bytes == step.forward.bytes + step.backward.bytes
    assert lin.weight.grad is None  # reset afterwards
    assert step.saved_bytes == saved_activation_bytes(lin, x) == 4 * 6 * F32  # mm saves its input


def test_traffic_sum_and_table():
    a, b = Traffic(), Traffic()
    a.add("aten.mm", 10, 4)
    b.add("aten.mm", 6, 2)
    b.add("aten.gelu", 3, 3)
    s = a + b
    assert (s.launches, s.bytes_read, s.bytes_written) == (3, 19, 9)
    assert s.per_op["aten.mm"].launches == 2 and s.top(1)[0].name == "aten.mm"
    assert "aten.gelu" in s.table() and s.to_dict()["bytes"] == 28


def _attention_block(x, qkv, proj, pool):
    """A small pooling-attention block with class-token split, transposes, cat and softmax."""
    B, N, C = x.shape
    q, k, v = qkv(x).reshape(B, N, 3, 2, C // 2).permute(2, 0, 3, 1, 4).unbind(0)
    cls, grid = k[:, :, :1], k[:, :, 1:]
    grid = pool(grid.reshape(B * 2, 3, 5, C // 2).permute(0, 3, 1, 2))
    k = torch.cat([cls, grid.flatten(2).transpose(1, 2).reshape(B, 2, -1, C // 2)], dim=2)
    attn = (q * (C // 2) ** -0.5) @ k.transpose(-2, -1)
    out = attn.softmax(-1) @ v[:, :, : k.shape[2]]
    return proj(out.transpose(1, 2).reshape(B, N, C))


def test_no_view_op_is_ever_counted_as_a_launch():
    """Every op the counter charges must move data: a view that slipped through FREE_OPS would
    show up here (forward and backward of a block with the usual layout gymnastics)."""
    torch.manual_seed(0)
    qkv, proj = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
    pool = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
    x = torch.randn(2, 16, 8, requires_grad=True)
    with TrafficCounter() as counter:
        F.gelu(_attention_block(x, qkv, proj, pool)).sum().backward()
    for name in counter.traffic.per_op:
        namespace, op = name.split(".")
        packet = getattr(getattr(torch.ops, namespace), op)
        overloads = [getattr(packet, o) for o in packet.overloads()]
        assert not any(o.is_view for o in overloads), f"{name} is a view but was charged"
    assert counter.traffic.launches > 10


def test_free_ops_move_no_data():
    """FREE_OPS holds only views, allocations and metadata queries (nothing that computes)."""
    for packet in FREE_OPS:
        overloads = [getattr(packet, o) for o in packet.overloads()]
        name = str(packet)
        is_view = any(o.is_view for o in overloads)
        allowed = is_view or name.split(".")[1].startswith(("empty", "new_empty", "sym_", "is_same",
                                                             "_has_compatible", "resolve_",
                                                             "lift_fresh", "reshape", "flatten",
                                                             "unflatten", "movedim", "expand_as",
                                                             "view_as", "chunk", "split",
                                                             "_reshape_alias"))
        returns_no_tensor = all("Tensor" not in str(r.type) for o in overloads for r in o._schema.returns)
        assert allowed or returns_no_tensor or any(
            o._schema.returns and o._schema.returns[0].alias_info is not None
            for o in overloads), f"{name} in FREE_OPS may move data"


def test_targets_are_the_issues_ratios():
    assert MODEL_TARGETS == {"forward_bytes": 0.30, "training_bytes": 0.40,
                             "saved_activations": 0.45, "training_launches": 0.35}


def test_reference_tiny_on_meta_if_available():
    """The whole reference model on meta (no memory, no arithmetic): forward traffic is
    positive, launch counts are stable across runs, and bf16 halves float32's bytes."""
    reference = pytest.importorskip("fastmvit.reference")
    if not hasattr(reference, "MViTv2"):
        pytest.skip("fastmvit.reference.MViTv2 not written yet")
    with torch.device("meta"):
        model = reference.MViTv2("tiny", img_size=64, num_classes=10)
    x = torch.randn(2, 3, 64, 64, device="meta")
    t32 = count_traffic(model, x)
    t16 = count_traffic(model.to(torch.bfloat16), x.to(torch.bfloat16))
    assert t32.launches == t16.launches > 50
    assert t16.bytes * 2 == pytest.approx(t32.bytes, rel=0.02)
    for name in t16.per_op:  # no view of the real model slipped through FREE_OPS
        namespace, op = name.split(".")
        packet = getattr(getattr(torch.ops, namespace), op)
        assert not any(getattr(packet, o).is_view for o in packet.overloads()), name

"""Students built from teachers: depth (kept blocks, teacher weights), width (pruning), bundles."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.distillation.students import build_student, depth_student, uniform_keep
from slimfuse.errors import ConfigError


def test_uniform_keep() -> None:
    assert uniform_keep(6, 3) == [0, 2, 5] or uniform_keep(6, 3) == [0, 3, 5]
    assert uniform_keep(6, 6) == [0, 1, 2, 3, 4, 5]
    assert uniform_keep(4, 1) == [3]
    with pytest.raises(ConfigError, match=r"depth 7: expected 1\.\.6"):
        uniform_keep(6, 7)


def test_resnet_depth_student_keeps_teacher_blocks_and_reloads(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = slimfuse.build_model("resnet1d", num_classes=10, widths=[8, 16], blocks_per_stage=3)
    x = torch.randn(2, 40)
    # blocks 0..2 (8 ch), 3 (8->16, stride 2), 4, 5; dropping block 3 is refused
    with pytest.raises(ConfigError, match=r"block 3 of 'layers' changes the shape"):
        depth_student(teacher, keep=[0, 5], example_inputs=x)
    student = depth_student(teacher, keep=[0, 3, 5], example_inputs=x)
    assert len(student.layers) == 3 and len(teacher.layers) == 6
    torch.testing.assert_close(student.layers[1].conv1.weight, teacher.layers[3].conv1.weight)
    assert student.layers[1].conv1.weight.data_ptr() != teacher.layers[3].conv1.weight.data_ptr()
    assert student(x).shape == (2, 10)
    back = slimfuse.load(slimfuse.save(student, tmp_path / "s"))
    torch.testing.assert_close(back(x), student.eval()(x))


def test_hf_encoder_depth_student(tmp_path) -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = {
        "model_type": "bert",
        "vocab_size": 50,
        "hidden_size": 16,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    teacher = slimfuse.build_model("hf_encoder", config=config).eval()
    student = build_student(teacher, depth=2)
    assert student.encoder.config.num_hidden_layers == 2
    assert len(student.encoder.encoder.layer) == 2
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones_like(ids)
    back = slimfuse.load(slimfuse.save(student, tmp_path / "s"))
    torch.testing.assert_close(back(ids, mask), student.eval()(ids, mask))


def test_width_student_through_pruning(mnist1d, trained_cnn) -> None:
    pytest.importorskip("torch_pruning")
    from slimfuse.api import shrink_width

    with pytest.raises(ConfigError, match=r"^a width-reduced student needs shrink="):
        build_student(trained_cnn, mnist1d.example_input(1), width=0.5)
    student = build_student(trained_cnn, mnist1d.example_input(1), width=0.5, shrink=shrink_width)
    assert student.conv2.out_channels < trained_cnn.conv2.out_channels
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in trained_cnn.parameters())
    assert n_s < 0.5 * n_t
    assert student(mnist1d.example_input(3)).shape == (3, 10)


def test_no_block_list_is_a_clear_error(trained_cnn) -> None:
    with pytest.raises(ConfigError, match=r"MNIST1DCNN has no block list"):
        depth_student(trained_cnn, depth=2)


def test_students_do_not_inherit_teacher_hooks() -> None:
    torch.manual_seed(0)
    teacher = slimfuse.build_model("resnet1d", num_classes=10, widths=[8], blocks_per_stage=2)
    seen = []
    teacher.layers[0].register_forward_hook(lambda *_: seen.append(1))
    student = depth_student(teacher, keep=[0, 1])
    student(torch.randn(1, 40))
    assert seen == []

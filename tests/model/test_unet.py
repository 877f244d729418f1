import copy

import pytest
import torch

from brasyn.model.unet import PRESETS, Denoiser, DenoiserConfig, GroupNorm32, timestep_embedding
from brasyn.weights.store import _randomise


def _key_lines(model: torch.nn.Module) -> list[str]:
    return [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]


def test_official_denoiser_has_the_official_keys_and_shapes(shared_dir):
    reference = (shared_dir / "reference" / "official_state_dict_keys.txt").read_text().splitlines()
    with torch.device("meta"):
        model = Denoiser()
    assert _key_lines(model) == reference
    assert sum(p.numel() for p in model.parameters()) == 81_511_048
    assert not list(model.buffers())


def test_golden_weights_load_strictly_and_reproduce_official_outputs(golden, golden_model):
    x = torch.cat([golden["x_t"], golden["conditioning"]["cond"]], dim=1)
    with torch.no_grad():
        for t, step in golden["steps"].items():
            out = golden_model(x, torch.tensor([int(t)]))
            assert (out - step["model_output"]).abs().max() <= 1e-4, f"t={t}"


def test_fresh_denoiser_outputs_zeros_because_its_last_layers_are_zero():
    model = Denoiser(model_channels=8, num_groups=4)
    for name, p in model.named_parameters():
        if p.dim() < 2:  # biases and norm shifts start at zero anyway
            continue
        is_zero = bool((p == 0).all())
        expected = name.startswith("out.2.") or ".out_layers.3." in name
        assert is_zero == expected, name
    assert (model.out[2].bias == 0).all()
    out = model(torch.randn(1, 32, 16, 16, 16), torch.tensor([5]))
    assert out.shape == (1, 8, 16, 16, 16)
    assert (out == 0).all()


def test_other_sizes_and_batches_work():
    model = Denoiser(
        in_channels=4, out_channels=2, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=2
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(3, 4, 4, 6, 8)
    out = model(x, torch.tensor([0, 10, 999]))
    assert out.shape == (3, 2, 4, 6, 8)
    # each batch element is independent of the others
    single = model(x[1:2], torch.tensor([10]))
    torch.testing.assert_close(out[1:2], single, atol=1e-5, rtol=1e-5)


def test_spatial_size_not_divisible_is_refused_with_the_divisor():
    model = Denoiser(model_channels=8, num_groups=4)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.zeros(1, 32, 16, 16, 24 + 4), torch.tensor([1]))


def test_to_returns_the_module_and_moves_parameters():
    model = Denoiser(model_channels=8, num_groups=4)
    moved = model.to(torch.float64)
    assert moved is model
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_group_norm_is_computed_in_float32_for_low_precision_inputs():
    norm = GroupNorm32(2, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(1, 4, 4, 4, 4) * 100 + 300
    expected = torch.nn.functional.group_norm(x.bfloat16().float(), 2, norm.weight, norm.bias, 1e-5)
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16(), atol=0, rtol=0)


def test_whole_model_runs_in_bfloat16_close_to_float32():
    model = Denoiser(model_channels=8, num_groups=4)
    _randomise(model, torch.Generator().manual_seed(3))  # a fresh model's zeroed output layer gives zeros
    x = torch.randn(1, 32, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([3])
    with torch.no_grad():
        reference = model(x, t)
        out = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16), t)
    assert out.dtype == torch.bfloat16
    assert reference.abs().mean() > 0.1
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.05, error  # bfloat16 keeps 8 bits of mantissa: about 0.4 % per operation


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="divisible"):
        DenoiserConfig(model_channels=10, num_groups=4)
    assert PRESETS["official"] == DenoiserConfig()
    for config in PRESETS.values():
        assert DenoiserConfig.from_dict({**config.to_dict(), "unrelated": 1}) == config
        Denoiser.from_config(config)  # builds


def test_channels_last_model_gives_the_same_output_whatever_the_input_layout(golden, golden_model):
    import copy

    model = copy.deepcopy(golden_model).to(memory_format=torch.channels_last_3d)
    x = torch.cat([golden["x_t"], golden["conditioning"]["cond"]], dim=1)
    with torch.no_grad():
        expected = golden_model(x, torch.tensor([417]))
        out = model(x, torch.tensor([417]))  # a contiguous input is converted
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - golden["steps"]["417"]["model_output"]).abs().max() <= 1e-4


def _saved_bytes_and_grads(
    model: Denoiser, x: torch.Tensor, t: torch.Tensor
) -> tuple[int, list, torch.Tensor]:
    """Bytes autograd keeps for the backward of one forward, the parameters' gradients and the output."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x, t)
    (out**2).mean().backward()
    return saved, [p.grad.clone() for p in model.parameters()], out.detach()


def test_checkpointing_keeps_less_for_the_backward_and_gives_the_same_output_and_gradients():
    model = Denoiser.from_config(PRESETS["tiny"])
    _randomise(model, torch.Generator().manual_seed(5))
    x = torch.randn(1, 32, 32, 32, 32, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([321])
    plain_bytes, plain_grads, plain_out = _saved_bytes_and_grads(model, x, t)
    model.checkpointing = True
    kept_bytes, grads, out = _saved_bytes_and_grads(model, x, t)
    assert torch.equal(out, plain_out)
    for g, p in zip(grads, plain_grads, strict=True):
        assert torch.allclose(g, p, rtol=1e-5, atol=1e-7)
    # only each block's inputs are kept (its activations are recomputed in the backward)
    assert kept_bytes < 0.35 * plain_bytes, (kept_bytes, plain_bytes)  # measured: 0.25
    with torch.no_grad():  # no gradients: nothing to keep, checkpointing stays out of the way
        assert torch.equal(model(x, t), plain_out)

import json
from dataclasses import fields

import pytest
import torch

from brasyn.model.bands import bands_to_image, clip_bands, image_to_bands
from brasyn.model.diffusion import Diffusion, DiffusionConfig
from brasyn.model.samplers import sample_ancestral, sample_ddim, sample_dpmpp_2m
from brasyn.model.schedule import SCHEDULES, spaced_timesteps
from brasyn.model.unet import Denoiser
from brasyn.model.wavelet import dwt3
from brasyn.weights.store import _randomise

TOL = 1e-4


@pytest.fixture(scope="module")
def diffusion() -> Diffusion:
    return Diffusion(steps=1000, schedule="linear")


@pytest.fixture(scope="module")
def small_model() -> Denoiser:
    """A cheap network with non-zero random weights, for properties that hold for any denoiser."""
    model = Denoiser(
        in_channels=32, out_channels=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _cond(shape=(1, 24, 4, 4, 4), seed=5):
    images = torch.rand(
        shape[0], shape[1] // 8, *(2 * s for s in shape[2:]), generator=torch.Generator().manual_seed(seed)
    )
    return image_to_bands(images)


def _official_table(tables, name: str) -> torch.Tensor:
    """The schedule table the official code calls ``name``. Its clipped log posterior variance (the log
    of the posterior variance with step 1's at step 0) is derived here: brasyn's samplers never read it."""
    if name == "posterior_log_variance_clipped":
        variance = tables.posterior_variance
        return torch.cat([variance[1:2], variance[1:]]).log()
    return getattr(tables, name)


def test_schedule_equals_golden_in_float64(diffusion, golden):
    for name, expected in golden["schedule"].items():
        ours = _official_table(diffusion.tables, name)
        assert ours.dtype == torch.float64
        assert (ours - expected).abs().max() <= 1e-10, name


def test_p_mean_variance_matches_golden_with_and_without_clipping(diffusion, golden, golden_model):
    cond = golden["conditioning"]["cond"]
    with torch.no_grad():
        for t, step in golden["steps"].items():
            tt = torch.tensor([int(t)])
            out = diffusion.p_mean_variance(golden_model, golden["x_t"], tt, cond, clip=True)
            assert (out["mean"] - step["mean"]).abs().max() <= TOL, t
            assert (out["log_variance"] - step["log_variance"]).abs().max() <= TOL, t
            assert (out["pred_xstart"] - step["pred_xstart_clipped"]).abs().max() <= TOL, t
            noclip = diffusion.p_mean_variance(golden_model, golden["x_t"], tt, cond, clip=False)
            assert (noclip["mean"] - step["mean_noclip"]).abs().max() <= TOL, t


def test_conditioning_helpers_match_golden(golden):
    cond = image_to_bands(golden["conditioning"]["images"])
    assert cond.shape == (1, 24, 16, 16, 16)
    torch.testing.assert_close(cond, golden["conditioning"]["cond"], atol=1e-6, rtol=0)
    torch.testing.assert_close(bands_to_image(cond), golden["conditioning"]["images"], atol=1e-6, rtol=0)
    for step in golden["steps"].values():
        torch.testing.assert_close(
            clip_bands(step["model_output"]), step["pred_xstart_clipped"], atol=1e-6, rtol=0
        )


def test_training_loss_reproduces_golden(diffusion, golden, golden_model):
    tr = golden["training"]
    x0 = image_to_bands(tr["target"])
    torch.testing.assert_close(x0, tr["x_start_wavelet"], atol=1e-6, rtol=0)
    t = torch.as_tensor(tr["t"]).reshape(1)
    noise = dwt3(tr["noise_image"])
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), tr["x_t"], atol=1e-5, rtol=0)
    with torch.no_grad():
        loss = diffusion.training_loss(golden_model, x0, golden["conditioning"]["cond"], t, noise)
    assert loss.dim() == 0
    assert abs(loss.item() - tr["mse"].item()) <= 1e-5 * tr["mse"].item()


def test_training_loss_has_gradients_for_every_parameter(diffusion, small_model):
    # random weights everywhere: a fresh model's zero-initialised layers would block most gradients
    model = Denoiser(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4)
    _randomise(model, torch.Generator().manual_seed(5))
    x0 = image_to_bands(torch.rand(2, 1, 8, 8, 8))
    loss = diffusion.training_loss(
        model, x0, _cond((2, 24, 4, 4, 4)), torch.tensor([3, 900]), torch.randn_like(x0)
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _record():
    trace = []
    return trace, lambda info: trace.append(info["x"].clone())


@pytest.mark.slow
def test_ddpm_sampler_follows_p_mean_variance_step_by_step(diffusion, small_model):
    cond = _cond()
    shape = (1, 8, 4, 4, 4)
    trace, callback = _record()
    ours = diffusion.sample(
        small_model, cond, shape, "ddpm", generator=torch.Generator().manual_seed(11), progress=callback
    )
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=gen)
    with torch.no_grad():
        for i, t in enumerate(range(999, -1, -1)):
            out = diffusion.p_mean_variance(small_model, x, torch.tensor([t]), cond)
            x = out["mean"]
            if t > 0:
                x = x + torch.exp(0.5 * out["log_variance"]) * torch.randn(shape, generator=gen)
            assert (trace[i] - x).abs().max() <= TOL, f"step {i} (t={t})"
    assert len(trace) == 1000
    torch.testing.assert_close(ours, trace[-1], atol=0, rtol=0)


@pytest.mark.slow
def test_ddim_with_eta_one_is_ancestral_sampling_with_posterior_variance(diffusion, small_model):
    cond = _cond(seed=6)
    shape = (1, 8, 4, 4, 4)
    tables = diffusion.tables

    def denoise(x, t):
        return clip_bands(small_model(torch.cat([x, cond], 1), t))

    runs = []
    for sampler in ("ancestral", "ddim"):
        trace, callback = _record()
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(shape, generator=gen)
        if sampler == "ancestral":
            sample_ancestral(denoise, x, tables, variance="fixed_small", generator=gen, callback=callback)
        else:
            sample_ddim(denoise, x, tables, eta=1.0, generator=gen, callback=callback)
        runs.append(trace)
    assert len(runs[0]) == len(runs[1]) == 1000
    for i, (a, b) in enumerate(zip(*runs, strict=True)):
        assert (a - b).abs().max() <= TOL, f"step {i}"


@pytest.mark.slow
def test_ddim_eta_zero_is_deterministic_and_clipped_on_the_golden_model(diffusion, golden, golden_model):
    cond = golden["conditioning"]["cond"]
    shape = (1, 8, 16, 16, 16)
    steps_seen = []

    def run(seed):
        return diffusion.sample(
            golden_model,
            cond,
            shape,
            "ddim",
            steps=20,
            generator=torch.Generator().manual_seed(seed),
            progress=lambda info: steps_seen.append((info["i"], info["steps"])),
        )

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert steps_seen[:20] == [(i, 20) for i in range(20)]
    image = bands_to_image(a)
    assert image.min() >= -1e-5 and image.max() <= 1 + 1e-5
    assert torch.isfinite(a).all()


def test_ddim_eta_zero_draws_no_noise_after_the_start(diffusion, small_model):
    cond = _cond()
    noise = torch.randn(1, 8, 4, 4, 4)
    a = diffusion.sample(
        small_model,
        cond,
        noise.shape,
        "ddim",
        steps=10,
        noise=noise,
        generator=torch.Generator().manual_seed(1),
    )
    b = diffusion.sample(
        small_model,
        cond,
        noise.shape,
        "ddim",
        steps=10,
        noise=noise,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(a, b)


def test_respaced_ancestral_chain_keeps_alphas_cumprod_at_kept_steps(diffusion):
    tables = diffusion.respaced(50)
    kept = tables.timesteps
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 50
    torch.testing.assert_close(tables.alphas_cumprod, diffusion.tables.alphas_cumprod[kept])
    # the short chain's betas compose to the same alpha_bar
    torch.testing.assert_close(torch.cumprod(1 - tables.betas, 0), tables.alphas_cumprod)
    assert diffusion.respaced(1000) is diffusion.tables


@pytest.mark.parametrize("sampler,steps", [("ddpm", 25), ("ddim", 7), ("ddim", 1)])
def test_short_chains_run_and_end_on_a_clipped_prediction(diffusion, small_model, sampler, steps):
    trace = []
    out = diffusion.sample(
        small_model,
        _cond(),
        (1, 8, 4, 4, 4),
        sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        progress=lambda info: trace.append(info),
    )
    assert len(trace) == steps
    torch.testing.assert_close(out, trace[-1]["pred_xstart"], atol=1e-6, rtol=0)
    # a one-step chain predicts x0 straight from t = 999; longer ones end at t = 0
    assert int(trace[-1]["t"][0]) == (0 if steps > 1 else 999)


def test_spaced_timesteps():
    assert spaced_timesteps(1000, 1000) == list(range(1000))
    assert spaced_timesteps(1000, 2) == [0, 999]
    assert spaced_timesteps(10, 4) == [0, 3, 6, 9]
    assert len(set(spaced_timesteps(1000, 999))) == 999
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 0)
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 1001)


def test_sampling_loop_never_reads_values_back_to_the_host(diffusion):
    # Tensors on the meta device have no values: any .item(), .tolist(), numpy conversion or
    # data-dependent branch in the loop would raise here.
    with torch.device("meta"):
        model = Denoiser(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4)
        cond = torch.empty(1, 24, 4, 4, 4)
    for sampler in ("ddpm", "ddim"):
        out = diffusion.sample(model, cond, (1, 8, 4, 4, 4), sampler, steps=5)
        assert out.device.type == "meta" and out.shape == (1, 8, 4, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_loop_has_no_cuda_synchronisation(diffusion):
    model = Denoiser(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4).cuda()
    cond = torch.rand(1, 24, 4, 4, 4, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    diffusion.sample(model, cond, (1, 8, 4, 4, 4), "ddpm", steps=3, generator=gen)  # warm-up, table copies
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sampler in ("ddpm", "ddim"):
            diffusion.sample(model, cond, (1, 8, 4, 4, 4), sampler, steps=5, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_arguments_are_refused_with_the_choices(diffusion, small_model):
    with pytest.raises(ValueError, match="ddpm"):
        diffusion.sample(small_model, _cond(), (1, 8, 4, 4, 4), "euler")
    with pytest.raises(ValueError, match="expected"):
        diffusion.sample(small_model, _cond(), (1, 8, 4, 4, 4), noise=torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="cosine"):
        Diffusion(schedule="quadratic")


# --- fast samplers ------------------------------------------------------------------------------


def _gaussian_denoiser(diffusion: Diffusion, variance: float):
    """The exact x0 predictor for data x0 ~ N(0, variance) per element: E[x0 | x_t]."""
    ac = diffusion.tables.alphas_cumprod

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ac[t].float().reshape(-1, *([1] * (x.dim() - 1)))
        return a.sqrt() * variance / (a * variance + 1 - a) * x

    return denoise


def test_dpm_solver_returns_the_clean_sample_of_a_model_that_knows_it():
    diffusion = Diffusion()
    target = torch.rand(1, 8, 4, 4, 4)
    for steps in (1, 2, 5, 20):
        x = torch.randn(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(steps))
        out = sample_dpmpp_2m(lambda x, t: target, x, diffusion.log_snr_spaced(steps).to("cpu"))
        torch.testing.assert_close(out, target, rtol=0, atol=1e-6)


def test_dpm_solver_beats_ddim_at_few_steps_on_a_gaussian_problem():
    """With the exact denoiser of Gaussian data, the probability-flow ODE's solution is known to the
    accuracy of a 1000-step DDIM run; DPM-Solver++(2M) must get closer with 10 and 20 steps than DDIM
    with the same number of model calls, and converge as the steps grow."""
    diffusion = Diffusion()
    denoise = _gaussian_denoiser(diffusion, variance=0.25)
    x = torch.randn(400, 8, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    reference = sample_ddim(denoise, x, diffusion.respaced(1000).to("cpu"))
    errors = {}
    for steps in (10, 20, 50):
        dpm = sample_dpmpp_2m(denoise, x, diffusion.log_snr_spaced(steps).to("cpu"))
        ddim = sample_ddim(denoise, x, diffusion.respaced(steps).to("cpu"))
        errors[steps] = float((dpm - reference).pow(2).mean().sqrt())
        assert errors[steps] < 0.5 * float((ddim - reference).pow(2).mean().sqrt()), steps
    assert errors[50] < errors[20] < errors[10] < 0.05


def test_log_snr_spacing_is_even_in_log_snr_from_the_last_timestep_to_the_first():
    diffusion = Diffusion()
    tables = diffusion.log_snr_spaced(12)
    t = tables.timesteps
    assert len(t) == 12 and t[0] == 0 and t[-1] == 999 and bool((t[1:] > t[:-1]).all())
    ac = tables.alphas_cumprod
    lam = 0.5 * (ac.log() - (1 - ac).log())
    steps = (lam[:-1] - lam[1:]).numpy()
    assert steps.max() / steps.min() < 1.5  # rounding to integer timesteps only
    # hundreds of steps would repeat timesteps: uniform ones instead, still the number asked for
    assert len(diffusion.log_snr_spaced(500)) == 500


def test_x0_sampler_is_one_model_call_returning_its_clipped_prediction():
    diffusion = Diffusion()
    calls = []

    class Model(torch.nn.Module):
        def forward(self, x, t):
            calls.append(int(t[0]))
            return torch.full((1, 8, 4, 4, 4), 2.0)  # LLL/3 = 2 is outside [0, 1] in image space

    out = diffusion.sample(Model(), torch.zeros(1, 24, 4, 4, 4), (1, 8, 4, 4, 4), "x0", steps=1000)
    assert calls == [999]
    torch.testing.assert_close(out, clip_bands(torch.full((1, 8, 4, 4, 4), 2.0)))


def test_dpm_solver_through_diffusion_sample_is_deterministic_and_calls_the_model_per_step():
    diffusion = Diffusion()
    calls = []

    class Model(torch.nn.Module):
        def forward(self, x, t):
            calls.append(int(t[0]))
            return torch.sigmoid(x[:, :8])

    cond = torch.zeros(1, 24, 4, 4, 4)
    runs = [
        diffusion.sample(
            Model(), cond, (1, 8, 4, 4, 4), "dpm++2m", steps=10, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert calls[:10] == sorted(calls[:10], reverse=True) and len(set(calls[:10])) == 10


# --- DiffusionConfig ----------------------------------------------------------------------------------


def test_diffusion_config_defaults_are_the_official_cwdm_settings():
    config = DiffusionConfig()
    assert (config.steps, config.schedule, config.prediction, config.clip) == (1000, "linear", "x0", True)
    assert Diffusion().config == config
    assert Diffusion(steps=1000, schedule="linear").config == config
    assert Diffusion(steps=100, schedule="cosine").config == DiffusionConfig(steps=100, schedule="cosine")


@pytest.mark.parametrize(
    "config", [DiffusionConfig(), DiffusionConfig(steps=250, schedule="cosine", clip=False)], ids=str
)
def test_diffusion_config_round_trips_through_a_json_dict_with_all_four_keys(config):
    as_dict = config.to_dict()
    assert list(as_dict) == ["steps", "schedule", "prediction", "clip"]
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert DiffusionConfig.from_dict(json.loads(json.dumps(as_dict))) == config


def test_old_two_key_settings_take_the_defaults_for_the_rest():
    assert DiffusionConfig.from_dict({"steps": 1000, "schedule": "linear"}) == DiffusionConfig()
    assert DiffusionConfig.from_dict({}) == DiffusionConfig()
    assert DiffusionConfig.from_dict({"steps": 200}) == DiffusionConfig(steps=200, schedule="linear")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 1000, "schedule": "linear", "eta": 0.0}, r"unknown diffusion setting\(s\) 'eta'"),
        ({"schedule": "quadratic"}, r"schedule 'quadratic' is not one of 'linear', 'cosine'"),
        ({"prediction": "eps"}, r"prediction 'eps' is not supported.*only 'x0'"),
        ({"steps": True}, r"steps must be a whole number, not bool"),
        ({"steps": 1000.0}, r"steps must be a whole number, not float"),
        ({"steps": "1000"}, r"steps must be a whole number, not str"),
        ({"steps": 0}, r"steps must be between 1 and 10000, got 0"),
        ({"steps": 10001}, r"steps must be between 1 and 10000, got 10001"),
        ({"clip": 1}, r"clip must be true or false, not int"),
        ({"prediction": 0}, r"prediction must be a string"),
        ([["steps", 1000]], r"must be an object, not list"),
    ],
)
def test_invalid_diffusion_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig.from_dict(settings)


def test_diffusion_config_constructor_validates_too():
    with pytest.raises(ValueError, match="steps"):
        DiffusionConfig(steps=True)
    with pytest.raises(ValueError, match="prediction 'eps' is not supported"):
        DiffusionConfig(prediction="eps")
    with pytest.raises(ValueError, match="schedule"):
        Diffusion(steps=100, schedule="sigmoid")
    with pytest.raises(TypeError, match="DiffusionConfig"):
        Diffusion.from_config({"steps": 100})


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_from_config_builds_the_same_tables_as_the_constructor(schedule):
    config = DiffusionConfig(steps=100, schedule=schedule, clip=False)
    built, direct = Diffusion.from_config(config), Diffusion(steps=100, schedule=schedule)
    for f in fields(direct.tables):
        assert torch.equal(getattr(built.tables, f.name), getattr(direct.tables, f.name)), f.name
    assert len(built.tables) == 100
    assert built.config == config and built.config.clip is False
    assert (built.num_steps, built.schedule) == (100, schedule)


def test_sampling_clips_as_the_config_says_unless_told_otherwise():
    class Model(torch.nn.Module):
        def forward(self, x, t):
            return torch.full((1, 8, 4, 4, 4), 2.0)  # LLL/3 = 2 is outside [0, 1] in image space

    raw = torch.full((1, 8, 4, 4, 4), 2.0)
    cond, shape = torch.zeros(1, 24, 4, 4, 4), (1, 8, 4, 4, 4)
    unclipped = Diffusion.from_config(DiffusionConfig(clip=False))
    torch.testing.assert_close(unclipped.sample(Model(), cond, shape, "x0"), raw)
    torch.testing.assert_close(unclipped.sample(Model(), cond, shape, "x0", clip=True), clip_bands(raw))
    torch.testing.assert_close(Diffusion().sample(Model(), cond, shape, "x0"), clip_bands(raw))
    torch.testing.assert_close(Diffusion().sample(Model(), cond, shape, "x0", clip=False), raw)

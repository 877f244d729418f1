"""Several draws per case (``--draws``): seeds per draw, their mean as the output, their spread as the
uncertainty map, and the same bytes whatever batch, shard or resumed run a case is synthesised in."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from brasyn.commands.cli import main
from brasyn.common.errors import UsageError
from brasyn.common.runtime import case_generator, case_seed
from brasyn.data.cases import discover
from brasyn.data.modalities import Modality
from brasyn.data.provenance import decide, differences, read_record
from brasyn.inference.draws import DrawBatch, Welford, sample_draws
from brasyn.inference.predictors import DiffusionPredictor, make_predictor
from brasyn.inference.synthesize import Synthesizer
from brasyn.model.diffusion import Sampling
from brasyn.model.samplers import standard_normal
from brasyn.weights.store import WeightStore, init_random
from tests.helpers import make_case

FAST = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-progress"]


def test_draw_zero_keeps_the_one_draw_seed_and_every_draw_has_its_own():
    assert case_seed(42, "c1", 0) == case_seed(42, "c1")
    seeds = {case_seed(42, "c1", k) for k in range(8)}
    assert len(seeds) == 8
    assert case_seed(42, "c1", 3) != case_seed(43, "c1", 3) != case_seed(42, "c2", 3)


def test_noise_from_one_generator_per_draw_does_not_depend_on_the_batch():
    shape = (3, 2, 4, 4, 4)
    together = standard_normal(
        shape, [case_generator(1, "c", torch.device("cpu"), k) for k in range(3)], "cpu"
    )
    for k in range(3):
        alone = standard_normal((1, *shape[1:]), case_generator(1, "c", torch.device("cpu"), k), "cpu")
        assert torch.equal(together[k : k + 1], alone)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        standard_normal(shape, [torch.Generator(), torch.Generator()], "cpu")


def test_the_running_mean_and_spread_are_numpys_and_a_prefix_is_a_shorter_run():
    rng = np.random.default_rng(0)
    images = rng.random((8, 5, 6, 7), dtype=np.float32)
    totals = Welford()
    seen = []
    for image in images:
        totals.add(image)
        seen.append(totals.summary())
    assert seen[0].spread is None and np.array_equal(seen[0].mean, images[0])
    last = seen[-1]
    assert np.allclose(last.mean, images.mean(0), atol=1e-6)
    assert np.allclose(last.spread, images.std(0, ddof=1), atol=1e-6)
    for k in (2, 4):
        shorter = sample_draws(lambda idx: images[list(idx)], k)
        assert np.array_equal(shorter.mean, seen[k - 1].mean)
        assert np.array_equal(shorter.spread, seen[k - 1].spread)


def test_a_batch_that_runs_out_of_memory_is_halved_and_kept_halved():
    images = np.arange(6 * 8, dtype=np.float32).reshape(6, 2, 2, 2)
    asked = []

    def sample(indices):
        asked.append(list(indices))
        if len(indices) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return images[list(indices)]

    batch = DrawBatch(6)
    summary = sample_draws(sample, 6, batch)
    assert asked == [[0, 1, 2, 3, 4, 5], [0, 1, 2], [0], [1], [2], [3], [4], [5]] and batch.size == 1
    assert np.allclose(summary.mean, images.mean(0)) and summary.draws == 6

    def never(indices):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        sample_draws(never, 2, DrawBatch(2))


def _predictor(weights, draws: int) -> DiffusionPredictor:
    return DiffusionPredictor(WeightStore(weights), torch.device("cpu"), Sampling("ddim", 2, draws=draws))


def test_the_mean_of_n_draws_is_the_mean_of_the_one_draw_runs_and_a_batch_of_draws_gives_the_same(tmp_path):
    weights = tmp_path / "w"
    init_random(weights, "tiny", seed=0)
    images = np.random.default_rng(1).random((3, 32, 32, 32), dtype=np.float32)
    many = Synthesizer(_predictor(weights, 3), seed=7, progress=False)
    summary = many.predict_draws(images, Modality.T2F, "c1")
    one = _predictor(weights, 1)
    singles = []
    for k in range(3):
        generator = case_generator(7, "c1", torch.device("cpu"), k)
        out = one.predict(torch.from_numpy(images)[None], Modality.T2F, generator)
        singles.append(out[0, 0].numpy())
    singles = np.stack(singles)
    assert np.allclose(summary.mean, singles.mean(0), atol=1e-6)
    assert np.allclose(summary.spread, singles.std(0, ddof=1), atol=1e-6)
    assert float(summary.spread.max()) > 0  # the draws differ
    # draw 0 of a several-draw run is the one-draw run's image
    assert np.array_equal(
        singles[0], Synthesizer(one, seed=7, progress=False).predict(images, Modality.T2F, "c1")
    )
    batched = _predictor(weights, 3)
    batched.draw_batch = DrawBatch(3)  # as a GPU does: every draw at once
    together = Synthesizer(batched, seed=7, progress=False).predict_draws(images, Modality.T2F, "c1")
    # one network call for three draws: the CPU kernels may sum in another order than for one
    assert np.allclose(together.mean, summary.mean, atol=1e-5)
    assert np.allclose(together.spread, summary.spread, atol=1e-5)


def test_a_baseline_refuses_several_draws(tmp_path):
    with pytest.raises(UsageError, match="--draws 4: the linear baseline is deterministic"):
        make_predictor("linear", tmp_path, "cpu", Sampling(draws=4))


def test_a_record_without_draws_is_one_draw():
    old = {"method": "diffusion", "sampler": "ddim", "steps": 2, "seed": 42}
    assert differences(old, {**old, "draws": 1}) == []
    assert differences(old, {**old, "draws": 4}) == ["draws"]
    assert differences({"method": "linear"}, {"method": "linear"}) == []


@pytest.fixture
def cases(tmp_path):
    weights = tmp_path / "w"
    init_random(weights, "tiny", seed=0)
    inputs = tmp_path / "in"
    for i in range(2):
        make_case(inputs, f"c{i}", ("t1n", "t1c", "t2w"), shape=(32, 32, 32), seed=i)
    return inputs, ["--weights", str(weights), *FAST]


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_draws_give_the_same_bytes_on_rerun_resume_and_shard(tmp_path, cases):
    inputs, settings = cases
    run = [*settings, "--draws", "3", "--input", str(inputs)]
    assert main([*run, "--output", str(tmp_path / "one")]) == 0
    written = _bytes(tmp_path / "one")
    assert len(written) == 2
    record = read_record(tmp_path / "one" / "c0-t2f.nii.gz")
    assert record["draws"] == 3 and record["seed"] == 42
    # the mean of three draws is not the one-draw image
    assert main([*settings, "--input", str(inputs), "--output", str(tmp_path / "single")]) == 0
    assert _bytes(tmp_path / "single")["c0-t2f.nii.gz"] != written["c0-t2f.nii.gz"]

    assert main([*run, "--output", str(tmp_path / "one"), "--overwrite"]) == 0
    assert _bytes(tmp_path / "one") == written
    (tmp_path / "one" / "c1-t2f.nii.gz").unlink()
    assert main([*run, "--output", str(tmp_path / "one"), "--report", str(tmp_path / "r.json")]) == 0
    statuses = {r["case"]: r["status"] for r in json.loads((tmp_path / "r.json").read_text())["cases"]}
    assert statuses == {"c0": "skipped", "c1": "written"}
    assert _bytes(tmp_path / "one") == written
    for share in ("0/2", "1/2"):
        assert main([*run, "--output", str(tmp_path / "sharded"), "--shard", share]) == 0
    assert _bytes(tmp_path / "sharded") == written


def test_a_rerun_with_other_draws_synthesises_again(tmp_path, cases, capsys):
    inputs, settings = cases
    out = tmp_path / "out"
    assert main([*settings, "--input", str(inputs), "--output", str(out)]) == 0
    output = out / "c0-t2f.nii.gz"
    assert decide(output, {**read_record(output), "draws": 1}).work is False
    assert main([*settings, "--draws", "2", "--input", str(inputs), "--output", str(out)]) == 0
    assert "was written with draws 1; this run uses draws 2" in capsys.readouterr().err
    assert read_record(output)["draws"] == 2


def test_extras_hold_the_uncertainty_map_on_the_outputs_grid(tmp_path, cases):
    pytest.importorskip("matplotlib")
    inputs, settings = cases
    out, extras = tmp_path / "out", tmp_path / "extras"
    run = [*settings, "--draws", "3", "--input", str(inputs), "--output", str(out), "--extras", str(extras)]
    assert main(run) == 0
    assert sorted(p.name for p in out.iterdir()) == ["c0-t2f.nii.gz", "c1-t2f.nii.gz"]
    names = ["c0-t2f-std.nii.gz", "c0-t2f.png", "c1-t2f-std.nii.gz", "c1-t2f.png"]
    assert sorted(p.name for p in extras.iterdir()) == names
    output = nib.load(out / "c0-t2f.nii.gz")
    spread = nib.load(extras / "c0-t2f-std.nii.gz")
    reference = nib.load(discover(inputs)[0].files[Modality.T1N])
    assert spread.shape == output.shape == reference.shape
    assert np.array_equal(spread.affine, output.affine)
    data = np.asarray(spread.dataobj)
    brain = np.asarray(reference.dataobj) != 0
    assert data.min() >= 0 and data.max() > 0
    assert not data[~brain].any()  # nothing where no input has signal
    record = read_record(extras / "c0-t2f-std.nii.gz")
    assert record["map"] == "std" and record["draws"] == 3
    from PIL import Image

    with Image.open(extras / "c0-t2f.png") as png:
        assert "standard deviation of 3 draws" in png.info["Description"]
        assert png.size[0] > 1100  # five columns, not four


def test_one_draw_writes_no_uncertainty_map(tmp_path, cases):
    pytest.importorskip("matplotlib")
    inputs, settings = cases
    extras = tmp_path / "extras"
    assert (
        main([*settings, "--input", str(inputs), "--output", str(tmp_path / "o"), "--extras", str(extras)])
        == 0
    )
    assert not list(extras.glob("*-std.nii.gz")) and len(list(extras.glob("*.png"))) == 2


def test_draws_come_from_the_mlcube_parameters_and_are_checked(tmp_path, cases, capsys):
    inputs, settings = cases
    weights = settings[1]
    parameters = tmp_path / "p.yaml"
    parameters.write_text("sampler: ddim\nsteps: 2\ndraws: 2\ndevice: cpu\n")
    args = ["infer", "--data_path", str(inputs), "--output_path", str(tmp_path / "o"), "--weights", weights]
    assert main([*args, "--parameters_file", str(parameters)]) == 0
    assert read_record(tmp_path / "o" / "c0-t2f.nii.gz")["draws"] == 2
    parameters.write_text("draws: 0\n")
    assert main([*args, "--parameters_file", str(parameters)]) == 2
    assert "draws: 0 is not valid" in capsys.readouterr().err

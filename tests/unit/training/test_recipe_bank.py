"""Recipe files and the seeded view bank: same seed, same pixels; folds never train on held-out data; one
command (``train-recipe``) makes a loadable classifier and its card. Real shared photos (skips without them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from roadminer.cli import app
from roadminer.models.classifier import load_classifier
from roadminer.training.bank import fit_bank, folds_for, predict_eval, render_bank, row_weights
from roadminer.training.data import load_image_folder
from roadminer.training.recipe import RecipeBank, RecipeFit, TrainRecipe
from testkit.data import tiny_copy

REPO = Path(__file__).resolve().parents[3]
RECIPES = sorted(p for p in (REPO / "configs" / "train").glob("*.yaml") if p.stem != "detector")  # classifiers


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_copy(shared_data, tmp_path_factory.mktemp("tiny"))


SMALL = RecipeBank(views_scale=2, kmin=1, kmax=2, paste_frac=0.5)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_load_and_name_their_model(path: Path) -> None:
    rec = TrainRecipe.from_yaml(path)
    assert (REPO / "src/roadminer/assets/models" / f"{rec.name}.safetensors").is_file()
    assert abs(sum(rec.bank.level_p) - 1) < 1e-9


def test_recipe_refuses_unknown_keys(tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPES[0].read_text())
    raw["fit"]["lerning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="lerning_rate") as e:
        TrainRecipe.from_yaml(bad)
    assert "bad.yaml" in str(e.value)


def test_bank_is_a_pure_function_of_its_seed(tiny: Path) -> None:
    samples = load_image_folder(tiny)
    cpu = torch.device("cpu")
    a = render_bank(samples, SMALL, workers=2, device=cpu)
    b = render_bank(samples, SMALL, workers=1, device=cpu)
    c = render_bank(samples, SMALL.model_copy(update={"seed": 99}), workers=2, device=cpu)
    assert torch.equal(a.views, b.views) and np.array_equal(a.meta, b.meta)
    assert torch.equal(a.eval_views, c.eval_views)  # evaluation views depend on eval_seed only
    assert not torch.equal(a.views, c.views)
    assert a.eval_views.shape == (4 * len(samples), 224, 224, 3)
    assert set(a.roles.tolist()) == {"plain", "paste"}
    assert a.meta[a.roles == "paste", 1].min() == 1  # copy-paste views are positives made from negatives


def test_folds_never_train_on_held_out_images_or_their_cut_outs(tiny: Path) -> None:
    samples = load_image_folder(tiny)
    bank = render_bank(samples, SMALL, workers=2, device=torch.device("cpu"))
    src = np.array([s.source for s in samples])
    fit = RecipeFit(paste_p=0.3)
    for name, held in folds_for(samples, "source"):
        w = row_weights(bank, ~held, fit, {name})
        assert w[held[bank.meta[:, 0]]].sum() == 0
        pasted_from_held = np.isin(bank.meta[:, 3], [k for k, s in enumerate(bank.paste_sources) if s == name])
        assert w[pasted_from_held].sum() == 0
        assert abs(w.sum() - 1) < 1e-9
    cities = folds_for(samples, "group:wzcity")
    assert [c for c, _ in cities] == ["wzcity:denver", "wzcity:houston"]
    assert all(src[h].tolist() == ["wzcity"] * int(h.sum()) for _, h in cities)


def test_fit_and_predict_from_the_bank(tiny: Path) -> None:
    samples = load_image_folder(tiny)
    bank = render_bank(samples, SMALL, workers=2, device=torch.device("cpu"))
    res = fit_bank(bank, np.ones(len(samples), dtype=bool), RecipeFit(batch=4, draws=8), progress=False)
    assert len(res.loss) == 2 and all(np.isfinite(res.loss))
    z = predict_eval(bank, res.model, res.prep, np.arange(3))
    assert z.shape == (4, 3) and np.isfinite(z).all()


def test_train_recipe_command_writes_a_loadable_model_and_card(tiny: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPES[0].read_text())
    raw["bank"].update({"views_scale": 2, "kmin": 1, "kmax": 1})
    raw["fit"].update({"batch": 4, "draws": 4})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "m" / "model.safetensors"
    r = CliRunner().invoke(app, ["train-recipe", str(recipe), "--data", str(tiny), "--prepared", "--out", str(out),
                                 "--workers", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    _model, prep, extra = load_classifier(out)
    assert prep["input_size"] == 224 and extra["recipe"] == raw["name"]
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["recipe"]["fit"]["draws"] == 4 and card["data"]["n"] == len(load_image_folder(tiny))
    assert card["recipe_sha256"] == extra["recipe_sha256"]


def test_train_recipe_refuses_a_missing_dataset_clearly(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train-recipe", str(RECIPES[0]), "--data", str(tmp_path / "nowhere"),
                                 "--out", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "dataset not found" in r.output, r.output
    assert not (tmp_path / "m.safetensors").exists()


def test_negatives_can_have_their_own_level_mix(tiny: Path) -> None:
    """``level_p_negative``: the negatives' plain views follow their own mix (here all level 3), positives and
    copy-paste views keep ``level_p``, and the recipe default leaves the bank as it was."""
    samples = load_image_folder(tiny)
    cpu = torch.device("cpu")
    mix = {"level_p_negative": [0, 0, 0, 1.0], "level_p": [1.0, 0, 0, 0]}
    hard = render_bank(samples, SMALL.model_copy(update=mix), workers=2, device=cpu)
    label, level = hard.meta[:, 1], hard.meta[:, 2]
    plain = hard.roles == "plain"
    assert set(level[plain & (label == 0)].tolist()) == {3}
    assert set(level[plain & (label == 1)].tolist()) == {0}
    assert set(level[hard.roles == "paste"].tolist()) == {0}
    assert RecipeBank().level_p_negative is None
    with pytest.raises(ValueError, match="level mix"):
        RecipeBank(level_p_negative=[0.5, 0.5, 0.5, 0])


def test_paste_bottom_strip_replaces_only_the_bottom() -> None:
    from PIL import Image

    from roadminer.training.copy_paste import paste_bottom_strip

    scene = Image.new("RGB", (120, 80), (0, 0, 255))
    donor = Image.new("RGB", (300, 100), (0, 255, 0))
    donor.paste((255, 0, 0), (0, 80, 300, 100))  # the donor's bottom 20%: its "bonnet"
    out = np.asarray(paste_bottom_strip(scene, donor, 0.2))
    assert out.shape == (80, 120, 3)
    assert (out[:64] == (0, 0, 255)).all()  # the scene above the strip is untouched
    assert (out[65:] == (255, 0, 0)).all()  # the strip is the donor's bottom, stretched to the width


def test_strip_views_are_negatives_with_a_positive_frames_bottom_strip(tiny: Path) -> None:
    """``strip_sources``: negatives carry the bottom strip of a positive frame of those sources and stay
    negatives; the plain rows are the same pixels as without strips; a fold never trains on a strip cut from
    one of its held-out images."""
    samples = load_image_folder(tiny)
    cpu = torch.device("cpu")
    cfg = SMALL.model_copy(update={"strip_sources": ["wzcity"], "strip_frac": 1.0})
    bank = render_bank(samples, cfg, workers=2, device=cpu)
    base = render_bank(samples, SMALL, workers=2, device=cpu)
    strip = bank.roles == "strip"
    assert strip.sum() > 0 and "strip" not in set(base.roles.tolist())
    assert set(bank.meta[strip, 1].tolist()) == {0}
    donors = bank.meta[strip, 4]
    assert all(samples[d].source == "wzcity" and samples[d].label == 1 for d in donors.tolist())
    assert (bank.meta[~strip, 4] == -1).all()
    assert torch.equal(bank.views[~strip], base.views) and np.array_equal(bank.meta[~strip], base.meta)
    fit = RecipeFit(paste_p=0.3, strip_p=0.2)
    for _name, held in folds_for(samples, "group:wzcity"):
        w = row_weights(bank, ~held, fit, set())
        from_held = strip & held[np.maximum(bank.meta[:, 4], 0)]
        assert from_held.any() and w[from_held].sum() == 0
        assert w[strip & ~from_held].sum() > 0 and abs(w.sum() - 1) < 1e-9
    w_all = row_weights(bank, np.ones(len(samples), dtype=bool), fit, set())
    of_negatives = np.array([samples[i].label == 0 for i in bank.meta[:, 0].tolist()])  # plain, paste, strip
    assert w_all[strip].sum() / w_all[of_negatives].sum() == pytest.approx(0.2)


def test_positive_strip_views_keep_the_label_and_their_share(tiny: Path) -> None:
    """``strip_pos_frac``: positives of the other sources carry a donor's bottom strip too and stay positive,
    so a bonnet comes with both labels; donors' own frames get none; the negatives' rows are the pixels of the
    recipe without them; ``strip_pos_p`` is their share of the positives' weight."""
    samples = load_image_folder(tiny)
    cpu = torch.device("cpu")
    neg_only = SMALL.model_copy(update={"strip_sources": ["wzcity"], "strip_frac": 1.0})
    both = neg_only.model_copy(update={"strip_pos_frac": 1.0})
    bank = render_bank(samples, both, workers=2, device=cpu)
    base = render_bank(samples, neg_only, workers=2, device=cpu)
    pos = bank.roles == "strip_pos"
    assert pos.sum() > 0 and "strip_pos" not in set(base.roles.tolist())
    owners = [samples[i] for i in bank.meta[pos, 0].tolist()]
    assert set(bank.meta[pos, 1].tolist()) == {1} and all(s.label == 1 and s.source != "wzcity" for s in owners)
    assert all(samples[d].source == "wzcity" for d in bank.meta[pos, 4].tolist())
    assert torch.equal(bank.views[~pos], base.views) and np.array_equal(bank.meta[~pos], base.meta)
    fit = RecipeFit(paste_p=0.3, strip_p=0.2, strip_pos_p=0.25)
    w = row_weights(bank, np.ones(len(samples), dtype=bool), fit, set())
    owners_mask = np.zeros(len(samples), dtype=bool)
    owners_mask[bank.meta[pos, 0]] = True
    of_owners = owners_mask[bank.meta[:, 0]]
    assert w[pos].sum() / w[of_owners].sum() == pytest.approx(0.25)
    w0 = row_weights(bank, np.ones(len(samples), dtype=bool), RecipeFit(paste_p=0.3, strip_p=0.2), set())
    assert w0[pos].sum() == 0
    with pytest.raises(ValueError):
        RecipeFit(strip_pos_p=1.0)


def test_strip_orange_filter_never_keeps_a_more_orange_strip(tiny: Path) -> None:
    """``strip_max_orange``: a strip showing work-zone orange is drawn again (least orange kept); None keeps the
    first draw, so recipes without it render the pixels they always did."""
    from PIL import Image

    from roadminer.training import bank as bank_mod
    from roadminer.training.copy_paste import bottom_strip_orange

    cone = Image.new("RGB", (100, 100), (128, 128, 128))
    cone.paste((255, 110, 0), (0, 90, 100, 100))  # saturated orange in the bottom tenth
    assert bottom_strip_orange(cone, 0.1) == 1.0 and bottom_strip_orange(cone, 0.5) == pytest.approx(0.2)
    samples = load_image_folder(tiny)
    donors = np.array([j for j, s in enumerate(samples) if s.source == "wzcity" and s.label == 1])
    bank_mod._G["samples"] = samples
    pairs = []
    try:
        for seed in range(12):
            bank_mod._G["strips"] = (donors, (0.04, 0.3), None)
            first = bank_mod._draw_strip(np.random.default_rng(seed))
            bank_mod._G["strips"] = (donors, (0.04, 0.3), 0.0)
            picked = bank_mod._draw_strip(np.random.default_rng(seed))
            pairs.append((bottom_strip_orange(samples[first[0]].read_pil(), first[1]),
                          bottom_strip_orange(samples[picked[0]].read_pil(), picked[1])))
    finally:
        bank_mod._G.clear()
    assert all(after <= before for before, after in pairs)
    assert any(after < before for before, after in pairs)  # some first draws showed orange and were replaced
    with pytest.raises(ValueError):
        RecipeBank(strip_max_orange=1.5)


def test_mixstyle_mixes_early_statistics_in_training_only() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    from roadminer.training.mixstyle import mixstyle, stage_ends

    torch.manual_seed(0)
    body = EfficientNet.from_name("efficientnet-lite0", num_classes=1)
    body._global_params = body._global_params._replace(drop_connect_rate=0.0)  # no other randomness in train mode
    assert stage_ends(body._blocks) == [0, 2, 4, 7, 10, 14, 15]  # 7 stages: 16, 24, 40, 80, 112, 192, 320 wide
    seen: list[torch.Tensor] = []
    body._blocks[4].register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    x = torch.randn(6, 3, 64, 64) * torch.linspace(0.2, 3.0, 6).view(6, 1, 1, 1)  # six very different "styles"
    body.eval()
    with torch.no_grad():
        ref = body(x)
        with mixstyle(body, 1.0):
            served = body(x)
        assert torch.equal(served, ref)  # eval mode: served exactly as without it
        body.train()
        body(x)
        with mixstyle(body, 1.0, alpha=0.1):
            body(x)
        plain_then_mixed = seen[-2], seen[-1]
        same = x[:1].repeat(6, 1, 1, 1)
        with mixstyle(body, 1.0):
            body(same)
        with_same = seen[-1]
        body(same)  # the context is over: no hook left
        without = seen[-1]
    assert not torch.allclose(plain_then_mixed[0], plain_then_mixed[1], atol=1e-3)  # stage 2's output was re-styled
    # six copies of one image share their statistics, so mixing them changes nothing
    assert torch.allclose(with_same, without, atol=1e-4)


def test_input_size_and_mixstyle_reach_the_saved_model(tiny: Path, tmp_path: Path) -> None:
    from roadminer.models.classifier import save_classifier, to_tensor

    samples = load_image_folder(tiny)
    bank = render_bank(samples, SMALL, workers=2, device=torch.device("cpu"))
    cfg = RecipeFit(batch=4, draws=8, input_size=256, mixstyle=0.5)
    res = fit_bank(bank, np.ones(len(samples), dtype=bool), cfg, progress=False)
    assert res.prep["input_size"] == 256 and all(np.isfinite(res.loss))
    out = tmp_path / "m.safetensors"
    save_classifier(res.model, out, cfg.arch, res.prep)
    model, prep, _ = load_classifier(out)
    assert prep["input_size"] == 256
    x = to_tensor([np.zeros((224, 224, 3), np.uint8)], prep)  # a challenge is upscaled to the model's side
    assert x.shape == (1, 3, 256, 256) and model(x).shape == (1,)
    with pytest.raises(ValueError, match="input_size"):
        RecipeFit(input_size=32)


def test_weight_mean_averages_weights_and_batchnorm_statistics() -> None:
    from roadminer.training.bank import _WeightMean

    def net(fill: float) -> torch.nn.Module:
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
        with torch.no_grad():
            for t in [*m.parameters(), m[1].running_mean, m[1].running_var]:
                t.fill_(fill)
        m[1].num_batches_tracked.fill_(int(fill))
        return m

    mean = _WeightMean(net(0.0))
    for fill in (1.0, 2.0, 6.0):
        mean.add(net(fill))
    out = net(5.0)
    mean.load_into(out)
    assert torch.allclose(out[0].weight, torch.full_like(out[0].weight, 3.0))
    assert torch.allclose(out[1].running_var, torch.full((4,), 3.0))  # BatchNorm statistics averaged too
    assert int(out[1].num_batches_tracked) == 5  # an integer counter keeps the model's own value


def test_average_from_averages_the_last_steps_only(tiny: Path) -> None:
    samples = load_image_folder(tiny)
    bank = render_bank(samples, SMALL, workers=2, device=torch.device("cpu"))
    train = np.ones(len(samples), dtype=bool)

    def weights(steps: int, average_from: float) -> torch.Tensor:
        cfg = RecipeFit(batch=4, draws=4 * steps, average_from=average_from)
        return fit_bank(bank, train, cfg, progress=False).model.state_dict()["body._fc.weight"].clone()

    # on two steps, averaging from half-way is the mean of the last step alone: the plain fit
    assert torch.equal(weights(2, 0.5), weights(2, 1.0))
    # on four steps it is the mean of steps 3 and 4, not the last step's weights
    assert not torch.allclose(weights(4, 0.5), weights(4, 1.0))
    with pytest.raises(ValueError, match="average_from"):
        RecipeFit(average_from=0.0)


def test_eval_views_can_come_from_another_copy_of_the_same_images(tiny: Path, tmp_path: Path) -> None:
    """``--eval-data``: train on a small copy, score the folds on views rendered from the full-size photos (as
    validators render theirs); the training views stay the copy's, and a copy that lacks images is refused."""
    from roadminer.training.bank import render_eval_views
    from roadminer.training.data import DatasetError, export_downsized
    from roadminer.training.recipe_run import same_images

    small = tmp_path / "small"
    export_downsized(tiny, small, short_side=96, quality=60, fmt="WEBP")
    copy = load_image_folder(small)
    full = same_images(copy, tiny)
    assert [Path(s.name).stem for s in full] == [Path(s.name).stem for s in copy]
    assert {s.path.suffix for s in full} == {".jpg"} and {s.path.suffix for s in copy} == {".webp"}
    cpu = torch.device("cpu")
    own = render_bank(copy, SMALL, workers=2, device=cpu)
    lent = render_bank(copy, SMALL, workers=2, device=cpu, eval_samples=full)
    assert torch.equal(own.views, lent.views)  # training views: the copy's pixels either way
    assert torch.equal(lent.eval_views, torch.from_numpy(render_eval_views(full, workers=2)))
    assert not torch.equal(own.eval_views, lent.eval_views)  # 96 px copy vs full-size photos
    with pytest.raises(ValueError, match="same order"):
        render_bank(copy, SMALL, workers=2, device=cpu, eval_samples=full[::-1])
    fewer = tmp_path / "fewer"
    export_downsized(tiny, fewer, short_side=96, max_per_source={"tracon": 1})
    with pytest.raises(DatasetError, match="training images are not there"):
        same_images(copy, fewer)

    raw = yaml.safe_load(RECIPES[0].read_text())
    raw["bank"].update({"views_scale": 2, "kmin": 1, "kmax": 1})
    raw["fit"].update({"batch": 4, "draws": 4})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    args = ["train-recipe", str(recipe), "--data", str(small), "--prepared", "--out", str(tmp_path / "m.safetensors"),
            "--workers", "2", "--device", "cpu", "--cv", "group:wzcity", "--no-final", "--report", str(tmp_path / "cv")]
    r = CliRunner().invoke(app, [*args, "--eval-data", str(tiny)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["eval_data"] == str(tiny)
    lent_cv = json.loads((tmp_path / "cv-group-wzcity.json").read_text())
    assert lent_cv["eval_data"] == str(tiny)
    own_args = [*args[:-1], str(tmp_path / "own")]
    assert CliRunner().invoke(app, own_args).exit_code == 0
    own_cv = json.loads((tmp_path / "own-group-wzcity.json").read_text())
    # the views differ, so their fingerprints do, and cascade-score refuses to replay the two as tiers
    assert own_cv["eval_views_sha256"] != lent_cv["eval_views_sha256"] and own_cv["eval_data"] is None
    r = CliRunner().invoke(app, ["cascade-score", "--images", str(small), "--tier",
                                 f"classifier={tmp_path / 'own-group-wzcity.json'}", "--tier",
                                 f"classifier2={tmp_path / 'cv-group-wzcity.json'}"])
    assert r.exit_code == 2 and "different evaluation views" in r.output, r.output
    r = CliRunner().invoke(app, [*args, "--eval-data", str(fewer)])
    assert r.exit_code == 2 and "not there" in r.output and "--eval-data" in r.output, r.output

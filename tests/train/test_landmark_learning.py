"""Learning tests of the landmark methods (slow; CPU, minutes each): a few hundred steps from random
weights must measurably improve what each method is for.

- DELG on synthetic landmark classes (objects cut from public-domain photos pasted onto others):
  leave-one-out global mAP on held-out images of the classes (new pastes, never trained on), with
  the trained checkpoint extracted through ``delfi.models.create`` as ``delfi extract`` does.
- DELG's local features reranking its global ranking (spatial verification) on held-out images.
- DELF keypoint stage on the DELG run's frozen backbone: the share of the attention on the pasted
  object, over the object's share of the image, on the held-out images.
- DELG for place recognition on a synthetic map of named images (the landmark classes as places of
  an sf-xs-style street, CosPlace groups): recall@1 through ``delfi eval vpr``'s code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("skimage")

from delfi.train.config import resolve_train_config  # noqa: E402
from delfi.train.landmark_config import LandmarkTrainConfig  # noqa: E402
from delfi.train.trainer import prepare_run_folder, train  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = 128


def run(method: str, out: Path, *words: str):
    config = resolve_train_config(method, list(words), schema=LandmarkTrainConfig)
    folder = prepare_run_folder(out, method=method)
    return train(config, folder, progress=False, logger=False, command=["test"])


def leave_one_out_map(descriptors: np.ndarray, labels: np.ndarray) -> float:
    from delfi.train.landmark_validation import leave_one_out_map as metric

    return metric(torch.as_tensor(descriptors), torch.as_tensor(labels))


def global_descriptors(model, folder: Path, names: list[str]) -> np.ndarray:
    return np.stack([model.extract(folder / name).global_descriptor.numpy() for name in names])


@pytest.fixture(scope="module")
def landmark_sets(tmp_path_factory):
    from delfi.datasets.synthetic_landmarks import make_synthetic_landmarks, skimage_photos

    root = tmp_path_factory.mktemp("synthetic-landmarks")
    objects, backgrounds = skimage_photos()
    settings = dict(classes=8, size=SIZE, object_scale=(0.3, 0.5))
    train_set = make_synthetic_landmarks(root / "train", objects, backgrounds, per_class=16, seed=0, **settings)
    held_out = make_synthetic_landmarks(root / "held-out", objects, backgrounds, per_class=4, seed=1, object_seed=0,
                                        start_index=100, **settings)
    return train_set, held_out


@pytest.fixture(scope="module")
def delg_run(landmark_sets, tmp_path_factory):
    """DELG trained 150 steps (batch 16, 128 px, bf16, the TF preset with SGD lr 0.05, constant)."""
    train_set, _ = landmark_sets
    return run("delg", tmp_path_factory.mktemp("delg") / "run", f"data.folder={train_set.root}", f"data.image_size={SIZE}",
               "data.batch_size=16", "data.area=[0.35, 1.0]", "data.num_workers=0", "data.val_fraction=0.25",
               f"val.image_size={SIZE}", "net.global_dim=256", "optim.lr=0.05", "optim.scheduler=constant",
               "trainer.max_steps=150", "trainer.val_every_n_steps=50", "trainer.precision=bf16-mixed")


def held_out_labels(held_out) -> tuple[list[str], np.ndarray]:
    names = sorted(held_out.boxes)
    return names, np.array([held_out.classes.index(name.split("/")[0]) for name in names])


def test_delg_global_retrieval_improves_on_held_out_instances(landmark_sets, delg_run):
    """Measured: held-out leave-one-out mAP 0.158 (random weights) -> 0.527; the run's own
    validation mAP 0.148 -> 0.721."""
    from delfi.models import create

    _, held_out = landmark_sets
    names, labels = held_out_labels(held_out)
    settings = dict(max_image_size=0, global_scales=[1.0], extract_local=False)
    trained = create("delg", weights=str(delg_run.best), **settings)
    torch.manual_seed(0)
    untrained = create("delg", load=False, global_dim=256, **settings)
    before = leave_one_out_map(global_descriptors(untrained, held_out.root, names), labels)
    after = leave_one_out_map(global_descriptors(trained, held_out.root, names), labels)
    assert delg_run.final_metrics["map"] > delg_run.initial_metrics["map"] + 0.15  # the run's own validation
    print(f"delg held-out mAP {before:.3f} -> {after:.3f}; run validation {delg_run.initial_metrics['map']:.3f} -> "
          f"{delg_run.final_metrics['map']:.3f}")
    assert after > before + 0.25 and after > 0.45, (before, after)


def test_delg_local_features_rerank_above_the_global_ranking(landmark_sets, delg_run, tmp_path):
    """Held-out images at 256 px (objects twice the training size: the layer3 receptive field, 267 px,
    covers the whole of a 128 px image), local features at scales 0.5, 0.71, 1 (top 300 by
    attention), the top 5 of the global ranking reranked by mutual nearest neighbours + affine RANSAC
    (12 px), TF's order (inliers, then global score). Measured: mean inliers 18.2 for images of the
    same object vs 9.3 for others; mAP 0.536 (global) -> 0.577 (reranked)."""
    from delfi.datasets.synthetic_landmarks import make_synthetic_landmarks, skimage_photos
    from delfi.match.pipeline import MatchingConfig
    from delfi.models import create
    from delfi.retrieval.rerank import RerankConfig, rerank
    from delfi.retrieval.search import ranking_from_scores

    train_set, _ = landmark_sets
    objects, backgrounds = skimage_photos()
    held_out = make_synthetic_landmarks(tmp_path / "held-out-256", objects, backgrounds, classes=8, per_class=4, size=2 * SIZE,
                                        object_scale=(0.3, 0.5), seed=1, object_seed=0, start_index=100)
    assert held_out.classes == train_set.classes
    names, labels = held_out_labels(held_out)
    model = create("delg", weights=str(delg_run.best), max_image_size=0, scales=[0.5, 0.7071, 1.0], global_scales=[0.5],
                   score_threshold=0.0, top_k=300)
    features = {name: model.extract(held_out.root / name) for name in names}
    descriptors = np.stack([features[name].global_descriptor.numpy() for name in names])
    similarity = descriptors @ descriptors.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1)[:, :-1]
    ranking = ranking_from_scores(names, names, np.take_along_axis(similarity, order, 1), order)

    class Source:
        def get(self, name):
            return features[name]

    matching = MatchingConfig(mutual=True, geometry="affine", threshold=12.0, max_iters=1000, seed=0)
    reranked = rerank(ranking, Source(), Source(), RerankConfig(top_k=5, matching=matching))

    def mean_ap(result) -> float:
        from delfi.eval.revisitop import average_precision

        return float(np.mean([average_precision(np.flatnonzero(labels[result.indices[q]] == labels[q]), 3)
                              for q in range(len(names))]))

    verified = reranked.inliers >= 0
    same = labels[reranked.indices] == labels[:, None]
    inliers_same, inliers_other = reranked.inliers[verified & same].mean(), reranked.inliers[verified & ~same].mean()
    before, after = mean_ap(ranking), mean_ap(reranked)
    print(f"delg reranking: inliers {inliers_same:.1f} same object vs {inliers_other:.1f}; mAP {before:.3f} -> {after:.3f}")
    assert inliers_same > 1.5 * inliers_other, (inliers_same, inliers_other)
    assert after > before + 0.02, (before, after)


def attention_on_objects(module, held_out) -> float:
    """Mean over held-out images of (attention mass on layer3 cells whose centre lies in the
    object's box) / (the share of cells in the box): 1 for attention blind to the object."""
    from delfi.io.images import read_image

    ratios = []
    module.eval()
    with torch.no_grad():
        for name, (x0, y0, x1, y1) in sorted(held_out.boxes.items()):
            image = read_image(held_out.root / name)[None]
            attention = module.outputs(image)["attention"][0, 0].float()
            h, w = attention.shape
            ys = (torch.arange(h) + 0.5) * image.shape[2] / h
            xs = (torch.arange(w) + 0.5) * image.shape[3] / w
            inside = ((ys[:, None] >= y0) & (ys[:, None] < y1) & (xs[None] >= x0) & (xs[None] < x1)).float()
            if inside.sum() > 0:
                ratios.append(float((attention * inside).sum() / attention.sum() / inside.mean()))
    return float(np.mean(ratios))


def test_delf_keypoint_stage_puts_the_attention_on_the_objects(landmark_sets, delg_run, tmp_path):
    """The keypoint stage on the DELG run's backbone (--init; frozen, batch norm too): 250 steps of
    the TF attention variant (BN, mean pooling) through a cosine classifier (Adam 2e-3). Measured:
    the attention's object share over the object's image share 1.05 -> 5.35 (the issue's target: 3)."""
    from delfi.train.landmark_module import LandmarkModule

    train_set, held_out = landmark_sets
    words = [f"data.folder={train_set.root}", f"data.image_size={SIZE}", "data.augment=resize", "data.batch_size=8",
             "data.num_workers=0", "data.gamma_scaling=null", "val.enabled=false", f"net.init_from={delg_run.best}",
             "net.attention_batch_norm=true", "net.attention_pool=mean", "loss.attention_classifier=cosine", "loss.scale=30",
             "optim.optimizer=adam", "optim.lr=0.002", "optim.scheduler=constant", "trainer.max_steps=250",
             "trainer.precision=bf16-mixed"]
    config = resolve_train_config("delf-keypoint", words, schema=LandmarkTrainConfig)
    torch.manual_seed(config.seed)
    before = attention_on_objects(LandmarkModule(config, [len(train_set.classes)]), held_out)
    result = run("delf-keypoint", tmp_path / "keypoint", *words)
    trained = LandmarkModule(resolve_train_config("delf-keypoint", words[:-1] + [f"net.init_from={result.last}"],
                                                  schema=LandmarkTrainConfig), [len(train_set.classes)])
    after = attention_on_objects(trained, held_out)
    print(f"attention on the objects {before:.2f} -> {after:.2f}")
    assert after >= 3.0 * before and after >= 3.0, (before, after)


def landmarks_as_places(landmark_sets, out: Path) -> Path:
    """An sf-xs-style tree of the synthetic landmarks: class c is the place at UTM east
    550005 + 30 c (10 m cells 3 apart, so CosPlace groups with cells_apart=2 split the classes in
    two); train/ = the training images, test/database = the first held-out image of each class,
    test/queries = the other three."""
    from PIL import Image

    train_set, held_out = landmark_sets
    for split, dataset in (("train", train_set), ("test", held_out)):
        for name in sorted(dataset.boxes):
            label, stem = name.split("/")
            c = dataset.classes.index(label)
            if split == "train":
                folder = out / "train"
            else:
                folder = out / "test" / ("database" if stem == "0100.png" else "queries")
            folder.mkdir(parents=True, exist_ok=True)
            east, north = 550005.0 + 30 * c, 4180005.0
            target = folder / f"@{east:.2f}@{north:.2f}@10@S@37.7@-122.4@c{c}i{stem[:-4]}@@90@@@@201301@@.jpg"
            Image.open(dataset.root / name).convert("RGB").save(target, quality=95)
    return out


def test_place_recognition_recall_improves(landmark_sets, tmp_path):
    """150 steps of 2 CosPlace groups of 4 places (25 steps each in turn), SGD lr 0.05, gradient
    clip 10. Measured: recall@1 of the 24 held-out queries against 8 database images (chance 12.5%)
    8.3% (random weights) -> 37.5%."""
    from delfi.eval.vpr_run import run_vpr
    from delfi.models import create

    street = landmarks_as_places(landmark_sets, tmp_path / "street")
    result = run("vpr", tmp_path / "vpr", f"data.root={street}", f"data.image_size={SIZE}", "data.batch_size=16",
                 "data.area=[0.35, 1.0]", "data.num_workers=0", "val.enabled=false", "vpr.min_images_per_class=5",
                 "vpr.cells_apart=2", "vpr.steps_per_group=25", "optim.optimizer=sgd", "optim.lr=0.05", "optim.head_lr=0.05",
                 "optim.weight_decay=0.0001", "optim.gradient_clip_val=10", "trainer.max_steps=150",
                 "trainer.precision=bf16-mixed")
    recalls = {}
    settings = dict(max_image_size=SIZE, extract_local=False)
    torch.manual_seed(0)
    for name, model in (("trained", create("vpr-delg", weights=str(result.last), **settings)),
                        ("untrained", create("vpr-delg", load=False, **settings))):
        recalls[name] = run_vpr(street, tmp_path / f"eval-{name}", split="test", model=model).recall_before[1]
    print(f"place recognition recall@1 {recalls}")
    assert recalls["trained"] > recalls["untrained"] + 20, recalls

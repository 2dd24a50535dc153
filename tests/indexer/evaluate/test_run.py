"""Evaluation: the codes scored through the index's search equal a brute-force ADC, and images
are decoded and embedded exactly as indexing does."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.evaluate.metrics import describe_in_batches, retrieval_metrics
from indexer.evaluate.run import (
    code_search_result,
    entries_of_part,
    evaluate_checkpoint,
    markdown_table,
)
from indexer.ingest.pipeline import decode_image, read_image
from indexer.ingest.sources import ArchiveImage
from indexer.learn.training import load_tensor_set
from model import Embedder, ModelCard, build_model, save_checkpoint
from model.preprocess import image_to_tensor, open_upright_rgb, preprocess
from tests.indexer.index_helpers import SHARED_DATA, M, descriptors_near_codewords, unit_codebooks

KATHER = SHARED_DATA / "kather2016-texture-240"


def brute_force_adc(queries: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(N, N) scores of every query against every item's code, from first principles: codes are
    the most similar codeword per sub-space, scores the dot product of the unit query
    sub-vectors with the chosen codewords."""
    count = queries.shape[0]
    sub = queries.reshape(count, M, -1)
    sub = sub / np.linalg.norm(sub, axis=2, keepdims=True)
    codes = np.einsum("nmd,mkd->nmk", sub, codebooks).argmax(axis=2)
    chosen = codebooks[np.arange(M)[None, :], codes]  # (N, M, d)
    scores: np.ndarray = np.einsum("qmd,nmd->qn", sub, chosen)
    return scores


def test_code_metrics_from_the_index_search_equal_a_brute_force_adc():
    codebooks = unit_codebooks(seed=4)
    descriptors = descriptors_near_codewords(60, codebooks, seed=5)
    rng = np.random.default_rng(6)
    labels = [f"class-{value}" for value in rng.integers(0, 3, 60)]
    groups = [f"group-{i % 12}" for i in range(60)]
    card = ModelCard(num_codebooks=M, codebook_size=16, codeword_dim=16)
    ks = (1, 5, 10)
    searched = code_search_result("codes", descriptors, codebooks, card, labels, groups, ks)
    scores = brute_force_adc(descriptors, codebooks)
    expected = retrieval_metrics(torch.from_numpy(scores), labels, groups, ks)
    for k in ks:
        assert searched.metrics.precision[k] == pytest.approx(expected.precision[k], abs=1e-6)
        assert searched.metrics.mean_average_precision[k] == pytest.approx(
            expected.mean_average_precision[k], abs=1e-6
        )
        assert searched.metrics.majority_vote_accuracy[k] == pytest.approx(
            expected.majority_vote_accuracy[k], abs=1e-6
        )
    # P@10 by hand from the brute-force scores, without the metrics module.
    group_array, label_array = np.array(groups), np.array(labels)
    hand = []
    for query in range(60):
        masked = np.where(group_array == group_array[query], -np.inf, scores[query])
        top = np.argsort(-masked, kind="stable")[:10]
        hand.append(np.mean(label_array[top] == label_array[query]))
    assert searched.metrics.precision[10] == pytest.approx(float(np.mean(hand)), abs=1e-6)
    # Cluster mate first: the best match other than the query itself, own group included.
    np.fill_diagonal(scores, -np.inf)
    mate_first = np.mean(group_array[scores.argmax(axis=1)] == group_array)
    assert searched.near_duplicate_top1 == pytest.approx(float(mate_first), abs=1e-6)


def exif_rotated_jpeg(tmp_path: Path) -> tuple[Path, Image.Image]:
    tiles = sorted(KATHER.rglob("*.tif"))
    if not tiles:
        pytest.skip("Kather 2016 tiles are missing")
    with Image.open(tiles[0]) as opened:
        upright = opened.convert("RGB").crop((0, 0, 150, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored a quarter-turn left; the viewer turns it back
    path = tmp_path / "rotated.jpeg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95, exif=exif)
    return path, upright


def test_an_exif_rotated_jpeg_gets_the_same_descriptor_in_evaluation_as_in_indexing(tmp_path):
    path, upright = exif_rotated_jpeg(tmp_path)
    torch.manual_seed(0)
    embedder = Embedder(build_model(ModelCard(input_size=32)), torch.device("cpu"))
    entry = ArchiveImage(path, "tumour", "g", "exif")
    evaluated = describe_in_batches(
        [entry], lambda images: torch.from_numpy(embedder.embed(images))
    ).numpy()
    indexed = embedder.embed([decode_image(read_image(entry))])
    np.testing.assert_array_equal(evaluated, indexed)
    with Image.open(path) as sideways:
        turned = embedder.embed([sideways.convert("RGB")])
    # The descriptor is that of the upright tile, not of the stored sideways pixels.
    upright_descriptor = embedder.embed([upright])
    assert np.abs(evaluated - upright_descriptor).max() < np.abs(evaluated - turned).max()


def test_training_decodes_an_exif_rotated_jpeg_upright(tmp_path):
    path, upright = exif_rotated_jpeg(tmp_path)
    [tensor] = load_tensor_set([ArchiveImage(path, None, "g", "exif")], 32)
    expected = image_to_tensor(upright, 32).mul(255)
    assert (tensor.float() - expected).abs().mean() < 6.0


def test_evaluation_has_a_backbone_ceiling_row_and_each_methods_share_of_its_precision(
    tmp_path: Path,
) -> None:
    if not (KATHER / "labels.csv").is_file():
        pytest.skip("Kather 2016 tiles are missing")
    torch.manual_seed(0)
    model = build_model(ModelCard(input_size=48, num_codebooks=4, codeword_dim=8)).eval()
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(model, checkpoint)
    report = evaluate_checkpoint(
        checkpoint, KATHER, part="all", ks=(1, 10), device_preference="cpu"
    )
    rows = {method.name: method.metrics.precision[10] for method in report.methods}
    ceiling = "resnet18 float features (ceiling)"
    assert report.ceiling == ceiling and ceiling in rows

    # The ceiling from first principles: the trunk's last feature map, averaged, cosine ranked,
    # the query's own group excluded.
    entries = entries_of_part(model, KATHER, "all")
    with torch.no_grad():
        images = [open_upright_rgb(entry.path) for entry in entries]
        features = model.trunk(preprocess(images, model.card))[-1].mean(dim=(2, 3)).numpy()
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    scores = features @ features.T
    groups = np.array([entry.group for entry in entries])
    labels = np.array([entry.label for entry in entries])
    hand = []
    for query in range(len(entries)):
        masked = np.where(groups == groups[query], -np.inf, scores[query])
        top = np.argsort(-masked, kind="stable")[:10]
        hand.append(np.mean(labels[top] == labels[query]))
    assert rows[ceiling] == pytest.approx(float(np.mean(hand)), abs=0.01)

    shares = report.share_of_ceiling()
    assert set(shares) == set(rows) and shares[ceiling] == pytest.approx(1.0)
    for name, precision in rows.items():
        assert shares[name] == pytest.approx(precision / rows[ceiling])
    assert report.as_dict()["share_of_ceiling_p10"] == shares
    codes_share = f"{shares['SPQ codes (ADC)']:.0%}"
    assert f"| SPQ codes (ADC) | {rows['SPQ codes (ADC)']:.3f} | {codes_share} |" in (
        markdown_table(report)
    )

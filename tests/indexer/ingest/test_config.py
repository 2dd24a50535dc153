"""The index config for feature archives: options of one kind of source refused for the other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from indexer.ingest.config import IndexConfig
from indexer.ingest.features import DEFAULT_CHUNK_ROWS


def test_feature_columns_reach_the_reader_and_rows_default_to_a_chunk() -> None:
    config = IndexConfig.model_validate(
        {"data": "rows.npy", "index": "var/x", "source": "features", "label_column": "type"}
    )
    options = config.feature_options(dim=192)
    assert (options.columns.label, options.columns.group, options.dim) == ("type", "group", 192)
    assert options.chunk_rows == config.feature_pipeline().batch_size == DEFAULT_CHUNK_ROWS


def test_pixel_options_are_refused_for_features_by_name() -> None:
    with pytest.raises(ValidationError, match="--stride does not apply to --source features"):
        IndexConfig.model_validate(
            {"data": "rows.npy", "index": "var/x", "source": "features", "stride": 32}
        )


def test_feature_columns_are_refused_for_images_by_name() -> None:
    with pytest.raises(ValidationError, match="--group-column applies to --source features only"):
        IndexConfig.model_validate({"data": "tiles", "index": "var/x", "group_column": "p"})


def test_a_second_stage_is_a_feature_option_and_its_shortlist_factor_needs_it() -> None:
    features = {"data": "rows.npy", "index": "var/x", "source": "features"}
    config = IndexConfig.model_validate({**features, "second_stage": "sq8"})
    settings = config.second_stage_settings()
    assert settings is not None and (settings.kind, settings.factor) == ("sq8", 10)
    assert IndexConfig.model_validate(features).second_stage_settings() is None
    with pytest.raises(ValidationError, match="--shortlist-factor needs --second-stage"):
        IndexConfig.model_validate({**features, "shortlist_factor": 30})
    with pytest.raises(ValidationError, match="--second-stage applies to --source features only"):
        IndexConfig.model_validate({"data": "tiles", "index": "var/x", "second_stage": "sq8"})

"""The media settings: the local directory by default, object storage by URL, production's rules."""
from __future__ import annotations

import pytest

from test_config import PRODUCTION, STRONG
from waflow import config

LOCAL_ONLY = {k: v for k, v in PRODUCTION.items() if k != "WAFLOW_MEDIA_DIR_SHARED"}
S3 = {**LOCAL_ONLY, "WAFLOW_MEDIA_URL": "s3://firm-media/waflow", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
      "AWS_SECRET_ACCESS_KEY": STRONG + STRONG}


def test_media_goes_to_a_local_directory_under_the_var_dir_and_is_kept_by_default(tmp_path):
    settings = config.load({"WAFLOW_VAR_DIR": str(tmp_path)})
    assert settings.media_dir == tmp_path / "media"
    assert (settings.media_url, settings.media_retention_days, settings.media_dir_shared) == ("", None, False)


def test_production_refuses_the_local_directory_unless_declared_shared():
    with pytest.raises(config.ConfigError, match="^WAFLOW_MEDIA_URL is not set: production needs object storage"):
        config.load(LOCAL_ONLY)
    assert config.load({**LOCAL_ONLY, "WAFLOW_MEDIA_DIR_SHARED": "true"}).media_dir_shared


def test_production_takes_object_storage_with_its_credentials():
    settings = config.load(S3)
    assert (settings.media_url, settings.s3_region, settings.s3_access_key_id) == (
        "s3://firm-media/waflow", "us-east-1", "AKIAEXAMPLE")
    assert STRONG not in repr(settings)


@pytest.mark.parametrize("value, rule", [("", "is not set"), ("minioadmin", "must be at least 16 characters long"),
                                         ("waflow-dev-s3-secret-key", "is the published development stand-in")])
def test_production_refuses_a_weak_object_storage_secret_naming_the_variable_never_the_value(value, rule):
    with pytest.raises(config.ConfigError, match=f"^AWS_SECRET_ACCESS_KEY {rule}, which production refuses") as refused:
        config.load({**S3, "AWS_SECRET_ACCESS_KEY": value})
    if value:
        assert value not in str(refused.value)


def test_production_refuses_object_storage_without_a_key_id_or_over_plain_http():
    with pytest.raises(config.ConfigError, match="^AWS_ACCESS_KEY_ID is not set"):
        config.load({**S3, "AWS_ACCESS_KEY_ID": ""})
    with pytest.raises(config.ConfigError, match="AWS_ENDPOINT_URL must use https in production"):
        config.load({**S3, "AWS_ENDPOINT_URL": "http://minio.internal:9000"})
    assert config.load({**S3, "AWS_ENDPOINT_URL": "https://r2.example.com"}).s3_endpoint_url == "https://r2.example.com"


@pytest.mark.parametrize("url", ["http://bucket/x", "s3://", "s3:///prefix", "s3://bucket/p?x=1", "bucket"])
def test_a_malformed_media_url_is_refused_naming_the_variable(url):
    with pytest.raises(config.ConfigError, match="^WAFLOW_MEDIA_URL must be s3://bucket"):
        config.load({"WAFLOW_MEDIA_URL": url, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})


def test_development_without_waflow_env_refuses_a_bucket_off_this_machine():
    for endpoint in ("", "https://s3.eu-central-1.amazonaws.com"):
        with pytest.raises(config.ConfigError, match="^WAFLOW_MEDIA_URL points off this machine"):
            config.load({"WAFLOW_MEDIA_URL": "s3://b", "AWS_ENDPOINT_URL": endpoint})
        assert config.load({"WAFLOW_ENV": "development", "WAFLOW_MEDIA_URL": "s3://b", "AWS_ENDPOINT_URL": endpoint})
    assert config.load({"WAFLOW_MEDIA_URL": "s3://b", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}).media_url


@pytest.mark.parametrize("raw, days", [("", None), ("30", 30), ("36500", 36500)])
def test_the_retention_is_a_number_of_days_or_unset_to_keep(raw, days):
    assert config.load({"WAFLOW_MEDIA_RETENTION_DAYS": raw}).media_retention_days == days


@pytest.mark.parametrize("raw", ["0", "-1", "forever", "36501"])
def test_a_bad_retention_is_refused_naming_the_variable(raw):
    with pytest.raises(config.ConfigError, match="^WAFLOW_MEDIA_RETENTION_DAYS must be"):
        config.load({"WAFLOW_MEDIA_RETENTION_DAYS": raw})


def test_downloads_are_paced_at_16_mb_a_second_unless_told_otherwise():
    assert config.load({}).media_download_rate == 16
    assert config.load({"WAFLOW_MEDIA_DOWNLOAD_RATE": "0"}).media_download_rate == 0
    with pytest.raises(config.ConfigError, match="^WAFLOW_MEDIA_DOWNLOAD_RATE must be"):
        config.load({"WAFLOW_MEDIA_DOWNLOAD_RATE": "fast"})

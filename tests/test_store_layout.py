"""StoreLayout validation, chunk geometry and int8 quantisation."""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.store.layout import StoreLayout, chunks_for_crop, dequantize, int8_scale, quantize_int8


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"dtype": "float32"}, "float32"),
        ({"codec": "gzip"}, "gzip"),
        ({"chunks_zyx": (32, 0, 32)}, "(32, 0, 32)"),
        ({"chunks_zyx": (32, 32, 32), "shards_zyx": (64, 48, 64)}, "(64, 48, 64)"),
        ({"channel_chunk": -1}, "-1"),
    ],
)
def test_bad_layout_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=r".*") as info:
        StoreLayout(**kwargs)
    assert needle in str(info.value)


def test_balanced_chunks_tile_with_little_padding():
    lay = StoreLayout(chunks_zyx=(64, 64, 64))
    shape = (180, 207, 171)
    chunks = lay.spatial_chunks(shape)
    assert chunks == (60, 52, 57)
    for c, s in zip(chunks, shape):
        n = -(-s // c)
        assert c <= 64 and n * c - s < n  # less than one voxel of padding per chunk along each axis
    assert StoreLayout(chunks_zyx=(64, 64, 64), balance=False).spatial_chunks(shape) == (64, 64, 64)
    assert StoreLayout(chunks_zyx=(64, 64, 64), balance=False).spatial_chunks((20, 100, 30)) == (20, 64, 30)
    assert StoreLayout().spatial_chunks((24, 24, 24)) == (24, 24, 24)


def test_shards_follow_chunks_and_round_to_the_volume():
    lay = StoreLayout(chunks_zyx=(32, 32, 32), shards_zyx=(128, 128, 128))
    assert lay.spatial_chunks((100, 100, 100)) == (32, 32, 32)
    assert lay.spatial_shards((100, 300, 40)) == (128, 128, 64)
    assert StoreLayout().spatial_shards((100, 100, 100)) is None


def test_attrs_round_trip():
    lay = StoreLayout(dtype="int8", chunks_zyx=(16, 32, 32), codec="blosc-zstd", shards_zyx=(32, 64, 64))
    assert StoreLayout.from_attrs(lay.to_attrs()) == lay


def test_compressors():
    from zarr.codecs import Crc32cCodec  # maskgen's hardware implementation is a subclass (same format)

    assert StoreLayout(checksum="none").compressors(2) is None
    assert [isinstance(c, Crc32cCodec) for c in StoreLayout().compressors(2)] == [True]  # default: a checksum per chunk
    codec, crc = StoreLayout(codec="blosc-lz4").compressors(2)
    assert codec.cname.value == "lz4" and codec.shuffle.value == "shuffle" and codec.typesize == 2
    assert isinstance(crc, Crc32cCodec)  # the checksum covers the compressed bytes
    (codec,) = StoreLayout(codec="blosc-zstd", checksum="none").compressors(1)
    assert codec.shuffle.value == "noshuffle"
    with pytest.raises(ValueError, match="md5"):
        StoreLayout(checksum="md5")


def test_layout_of_a_store_made_before_checksums_reads_as_none():
    old = StoreLayout().to_attrs()
    del old["checksum"]
    assert StoreLayout.from_attrs(old).checksum == "none"
    assert StoreLayout.from_attrs(StoreLayout().to_attrs()).checksum == "crc32c"


def test_int8_round_trip_error_is_half_a_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 7, 8)).astype(np.float32) * np.array([1, 10, 0.01, 0], np.float32)[:, None, None, None]
    scale = int8_scale(x)
    assert scale.shape == (4,) and scale[3] == 1.0  # an all-zero channel keeps a usable scale
    q = quantize_int8(x, scale)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    back = dequantize(q, scale)
    assert back.dtype == np.float32
    err = np.abs(back - x).reshape(4, -1).max(axis=1)
    assert np.all(err <= scale / 2 + 1e-6)
    with pytest.raises(ValueError, match="scale"):
        dequantize(q, None)


def test_chunks_follow_the_crop_size():
    assert chunks_for_crop((64, 64, 64)) == (48, 48, 48)
    assert chunks_for_crop((128, 192, 192)) == (64, 64, 64)
    assert chunks_for_crop((16, 32, 96)) == (32, 32, 64)
    with pytest.raises(ValueError, match=r"\(0, 64, 64\)"):
        chunks_for_crop((0, 64, 64))


def test_chunks_carry_a_standard_crc32c(tmp_path):
    """maskgen's hardware CRC32C writes the bytes zarr's own codec (google-crc32c) expects: stores stay portable."""
    import google_crc32c
    import zarr

    from maskgen.store.kv import StoreIO

    io = StoreIO(tmp_path / "a.zarr")
    arr = zarr.create_array(io.store, shape=(6, 6), chunks=(3, 3), dtype="float16",
                            compressors=StoreLayout().compressors(2))
    arr[:] = np.arange(36, dtype=np.float16).reshape(6, 6)
    raw = (tmp_path / "a.zarr" / "c" / "1" / "0").read_bytes()
    assert len(raw) == 3 * 3 * 2 + 4
    assert raw[-4:] == np.uint32(google_crc32c.value(raw[:-4])).tobytes()
    np.testing.assert_array_equal(np.frombuffer(raw[:-4], np.float16), np.arange(36).reshape(6, 6)[3:, :3].ravel())


def test_default_dtype_is_int8_and_a_rerun_keeps_an_existing_stores_dtype():
    """int8 features are the default of new stores (chosen by measurement, benchmarks/README.md); `maskgen extract`
    without --dtype on a store made before (float16) keeps adding float16 cases instead of refusing."""
    from maskgen.data.pipeline import Pipeline
    from maskgen.extract.run import ExtractConfig

    pipe = Pipeline(name="toy", layout="nnunet", spacing=(1.0, 1.0, 1.0), crop_size=(64, 64, 64),
                    normalization="minmax", classes=("a",))
    cfg = ExtractConfig(dataset="demo", extractor="mind")
    assert StoreLayout().dtype == "int8" and cfg.layout_for(pipe).dtype == "int8"
    older = {"layout": StoreLayout(dtype="float16").to_attrs()}
    assert cfg.layout_for(pipe, older).dtype == "float16"
    assert ExtractConfig(dataset="demo", extractor="mind", dtype="int8").layout_for(pipe, older).dtype == "int8"

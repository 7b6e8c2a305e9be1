"""Files written and read past the page cache: the same bytes as through it, any size, any
range, and the page cache wherever direct I/O is refused."""

import errno
import multiprocessing
import os

import numpy as np
import pytest

from bhive import direct_io

SIZES = [0, 1, direct_io.BLOCK - 1, direct_io.BLOCK, direct_io.BLOCK + 1, direct_io.STAGING_BYTES,
         direct_io.STAGING_BYTES + 3 * direct_io.BLOCK + 5]


def random_bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.fixture(params=["direct", "page cache"])
def mode(request, monkeypatch):
    """Each test twice: as the system allows (direct where the file system takes it), and with
    direct I/O switched off."""
    if request.param == "page cache":
        monkeypatch.setenv(direct_io.SWITCH, "off")
    return request.param


@pytest.mark.parametrize("size", SIZES)
def test_a_written_file_holds_exactly_its_parts(tmp_path, mode, size):
    data = random_bytes(size)
    header = b"header of 37 bytes, not whole blocks"
    as_floats = data[: size - size % 4].view(np.float32)
    path = tmp_path / "file.bin"
    direct_io.write_file(path, [header, as_floats, data[size - size % 4:]])
    assert path.read_bytes() == header + data.tobytes()


@pytest.mark.parametrize("start, length", [(0, 0), (0, 10), (4095, 2), (4096, 4096), (123, 20_000),
                                           (5, direct_io.STAGING_BYTES + 2 * direct_io.BLOCK + 7)])
def test_any_range_reads_back(tmp_path, mode, start, length):
    data = random_bytes(direct_io.STAGING_BYTES + 5 * direct_io.BLOCK + 11, seed=1)
    path = tmp_path / "file.bin"
    path.write_bytes(data.tobytes())
    out = np.empty(length // 4, dtype=np.float32) if length % 4 == 0 else np.empty(length, dtype=np.uint8)
    direct_io.read_into(path, start, out)
    assert out.tobytes() == data[start:start + length].tobytes()


def test_reading_past_the_end_names_the_file(tmp_path, mode):
    path = tmp_path / "short.bin"
    path.write_bytes(bytes(5000))
    with pytest.raises(direct_io.ShortFileError, match=f"{path} ends 100 bytes early"):
        direct_io.read_into(path, 4000, np.empty(1100, dtype=np.uint8))


def test_a_file_system_that_refuses_direct_io_gets_the_page_cache(tmp_path, monkeypatch):
    opened = []
    plain_open = os.open

    def refusing_open(path, flags, *args):
        opened.append(flags)
        if flags & direct_io._DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return plain_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    path = tmp_path / "file.bin"
    data = random_bytes(direct_io.DIRECT_MIN_BYTES + 10_000)
    assert direct_io.write_file(path, [data]) is False
    assert path.read_bytes() == data.tobytes()
    out = np.empty(len(data) - 1_000, dtype=np.uint8)
    direct_io.read_into(path, 1_000, out)
    assert out.tobytes() == data[1_000:].tobytes()
    assert direct_io.enabled() == bool(direct_io._DIRECT) and (not direct_io._DIRECT or opened)


def test_small_files_go_through_the_page_cache(tmp_path, monkeypatch):
    opened = []
    plain_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *args: opened.append(flags) or plain_open(path, flags, *args))
    data = random_bytes(direct_io.DIRECT_MIN_BYTES - 1)
    assert direct_io.write_file(tmp_path / "small.bin", [data]) is False
    assert not any(flags & direct_io._DIRECT for flags in opened)
    out = np.empty(100, dtype=np.uint8)
    direct_io.read_into(tmp_path / "small.bin", 5, out)
    assert out.tobytes() == data[5:105].tobytes()


def test_other_errors_are_not_swallowed(tmp_path):
    with pytest.raises(FileNotFoundError):
        direct_io.write_file(tmp_path / "missing" / "file.bin", [b"x"])
    with pytest.raises(FileNotFoundError):
        direct_io.read_into(tmp_path / "missing.bin", 0, np.empty(4, dtype=np.uint8))


def test_non_contiguous_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="C-contiguous"):
        direct_io.read_into(tmp_path / "x", 0, np.empty((4, 4), dtype=np.float32)[:, 0])


def test_the_switch_turns_direct_io_off(tmp_path, monkeypatch):
    monkeypatch.setenv(direct_io.SWITCH, "off")
    assert not direct_io.enabled()
    assert direct_io.write_file(tmp_path / "f.bin", [b"abc"]) is False
    monkeypatch.setenv(direct_io.SWITCH, "on")
    assert direct_io.enabled() == bool(direct_io._DIRECT)


def _fill_staging(value: int) -> None:
    direct_io._staging_buffer()[1][:] = value


def test_a_forked_worker_has_a_staging_buffer_of_its_own():
    # worker processes forked by the conversion's executors write pieces at the same time
    view = direct_io._staging_buffer()[1]
    view[:] = 7
    worker = multiprocessing.get_context("fork").Process(target=_fill_staging, args=(3,))
    worker.start()
    worker.join()
    assert worker.exitcode == 0 and (view == 7).all()


def _mapping_fields(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``address``."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as stream:
        for line in stream:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, stop = (int(bound, 16) for bound in head.split("-"))
                inside = start <= address < stop
            elif inside:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    return fields


def _huge_pages_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as stream:
            return stream.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "none"


@pytest.mark.skipif(_huge_pages_mode() not in {"madvise", "always"}, reason="no transparent huge pages here")
def test_the_staging_buffer_may_take_huge_pages():
    # a direct read or write pins the buffer's pages: in huge pages far fewer of them
    view = direct_io._staging_buffer()[1]
    fields = _mapping_fields(view.ctypes.data)
    assert fields.get("THPeligible") == "1"
    if _huge_pages_mode() == "madvise":
        assert "hg" in fields.get("VmFlags", "").split()  # the advice itself

"""Part 10 encoding that copies what de-identification did not touch.

pydicom's writer spends most of its time on elements it writes back unchanged (a raw element
still costs a buffer, several checks and writes). Here an element that is still raw (never
decoded, so never changed) is emitted as its tag, VR, length and original value bytes, in the
same transfer syntax it was read in, which is exactly what pydicom writes for it; the Pixel
Data of a file whose pixels were not cleaned is such an element, so its bytes go out verbatim.
Everything else (changed or new elements, the preamble and File Meta Information, any dataset
whose encoding or character set changed) is written by pydicom itself. tests/test_dicom_encode.py
checks the result is byte-identical to pydicom's `dcmwrite` over pydicom's own test files.
"""
from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010


class _ByPydicom(Exception):
    """Something only pydicom's writer knows how to handle (e.g. elements read in another encoding)."""


def encode(ds: Dataset) -> list[bytes]:
    """The Part 10 file of `ds` (as `ds.save_as(..., enforce_file_format=True)` writes it), as chunks."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_private or not syntax.is_transfer_syntax or \
            syntax == DeflatedExplicitVRLittleEndian or _pixel_length_disagrees(ds, syntax) or \
            any(tag < 0x00030000 for tag in ds.keys()):  # command or meta elements in the dataset: pydicom refuses
        return _by_pydicom(ds)
    try:
        return _encode(ds, syntax)
    except _ByPydicom:
        return _by_pydicom(ds)


def _by_pydicom(ds: Dataset) -> list[bytes]:
    whole = BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    return [whole.getvalue()]


def _encode(ds: Dataset, syntax) -> list[bytes]:
    if PIXEL_DATA in ds and not getattr(ds.get_item(PIXEL_DATA), "is_raw", False):
        ds[PIXEL_DATA].is_undefined_length = syntax.is_compressed  # as dcmwrite sets it (PS3.5 A.4)
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    _meta(body, ds)
    chunks: list[bytes] = []
    _dataset(body, ds, chunks, "iso8859")
    _flush(body, chunks)
    return chunks


def _meta(fp: DicomBytesIO, ds: Dataset) -> None:
    """Preamble, 'DICM' and the File Meta Information, as dcmwrite(enforce_file_format=True)
    writes them: the Media Storage UIDs follow the dataset's (set here in the dataset's own
    meta, which is what dcmwrite writes from its copy) and pydicom completes and checks the rest."""
    meta = ds.file_meta
    for media, own in (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        value = ds.get(own)
        if media not in meta or (value and value != meta[media].value):
            setattr(meta, media, value)
    preamble = getattr(ds, "preamble", None)
    if preamble and len(preamble) != 128:
        raise _ByPydicom("odd preamble")
    fp.write(preamble or b"\x00" * 128)
    fp.write(b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)


def _pixel_length_disagrees(ds: Dataset, syntax) -> bool:
    """dcmwrite gives Pixel Data an undefined length exactly when the syntax is compressed."""
    raw = ds.get_item(PIXEL_DATA) if PIXEL_DATA in ds else None
    if raw is None or not getattr(raw, "is_raw", False):
        return False
    return (raw.length == _UNDEFINED) != syntax.is_compressed


def _flush(fp: DicomBytesIO, chunks: list[bytes]) -> None:
    if fp.tell():
        chunks.append(fp.getvalue())
        fp.seek(0)
        fp.parent.truncate()


def _dataset(fp: DicomBytesIO, dataset: Dataset, chunks: list[bytes], parent_encoding) -> None:
    """Like pydicom's write_dataset, with raw elements copied; values go to `chunks` (large raw
    values as they are, without a copy)."""
    encoding = (fp.is_implicit_VR, fp.is_little_endian)
    if dataset.original_encoding != encoding or dataset.original_character_set != dataset._character_set:
        write_dataset(fp, dataset, parent_encoding)  # pydicom converts and re-encodes it
        return
    encodings = dataset.get("SpecificCharacterSet", parent_encoding)
    endian = "<" if fp.is_little_endian else ">"
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = dataset.get_item(tag)
        if getattr(elem, "is_raw", False) and elem.value is not None:
            _raw(fp, elem, endian, chunks)
        elif elem.VR == "SQ":
            _sequence(fp, dataset[tag], chunks, encodings, endian)
        else:
            write_data_element(fp, elem, encodings)


def _raw(fp: DicomBytesIO, elem, endian: str, chunks: list[bytes]) -> None:
    value, undefined = elem.value, elem.length == _UNDEFINED
    length = _UNDEFINED if undefined else len(value)
    if elem.is_implicit_VR != fp.is_implicit_VR or elem.is_little_endian != fp.is_little_endian or \
            (not fp.is_implicit_VR and elem.VR not in _LONG_VRS and length > 0xFFFF):
        raise _ByPydicom(f"{elem.tag} was read in another encoding or does not fit a short length")
    if fp.is_implicit_VR:
        header = struct.pack(endian + "HHL", elem.tag >> 16, elem.tag & 0xFFFF, length)
    elif elem.VR in _LONG_VRS:
        header = struct.pack(endian + "HH2s2xL", elem.tag >> 16, elem.tag & 0xFFFF, elem.VR.encode(), length)
    else:
        header = struct.pack(endian + "HH2sH", elem.tag >> 16, elem.tag & 0xFFFF, elem.VR.encode(), length)
    fp.write(header)
    if len(value) > 65536:  # e.g. Pixel Data: handed on as it was read
        _flush(fp, chunks)
        chunks.append(value)
    else:
        fp.write(value)
    if undefined:
        fp.write(struct.pack(endian + "HHL", 0xFFFE, 0xE0DD, 0))  # Sequence Delimitation Item


def _sequence(fp: DicomBytesIO, elem, chunks: list[bytes], encodings, endian: str) -> None:
    """A decoded sequence: header and items as pydicom writes them, item contents copied where raw."""
    items = DicomBytesIO()
    items.is_implicit_VR, items.is_little_endian = fp.is_implicit_VR, fp.is_little_endian
    for item in elem.value:
        items.write(struct.pack(endian + "HHL", 0xFFFE, 0xE000, _UNDEFINED))
        start = items.tell()
        content = DicomBytesIO()
        content.is_implicit_VR, content.is_little_endian = fp.is_implicit_VR, fp.is_little_endian
        nested: list[bytes] = []
        _dataset(content, item, nested, encodings)
        _flush(content, nested)
        data = b"".join(nested)
        if getattr(item, "is_undefined_length_sequence_item", False):
            items.write(data)
            items.write(struct.pack(endian + "HHL", 0xFFFE, 0xE00D, 0))  # Item Delimitation Item
        else:
            items.seek(start - 4)
            items.write(struct.pack(endian + "L", len(data)))
            items.write(data)
    value = items.getvalue()
    undefined = elem.is_undefined_length
    length = _UNDEFINED if undefined else len(value)
    if fp.is_implicit_VR:
        fp.write(struct.pack(endian + "HHL", elem.tag >> 16, elem.tag & 0xFFFF, length))
    else:
        fp.write(struct.pack(endian + "HH2s2xL", elem.tag >> 16, elem.tag & 0xFFFF, b"SQ", length))
    fp.write(value)
    if undefined:
        fp.write(struct.pack(endian + "HHL", 0xFFFE, 0xE0DD, 0))

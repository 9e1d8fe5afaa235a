"""Burned-in text cleaned, not just quarantined (issue 15: 14 of 15 public ultrasound and
screen-capture files were quarantined wholesale).

Inputs: pydicom-data's US1_UNCR.dcm and US1_J2KR.dcm (GE LOGIQ 700 ultrasound with the real
burned-in institution "BAPTIST MED CTR", uncompressed and JPEG 2000) and pydicom's Secondary
Capture SC_rgb_rle_2frame.dcm / SC_rgb.dcm, with a patient's name and record number rendered
into the pixels. Tesseract reads the images before and after (the same OCR the stage uses,
as an independent look at the released pixels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from medplat.workloads.dicom_anonymizer.deid import Keys
from medplat.workloads.dicom_anonymizer.pixels import header_snapshot, ocr_words, parse_ctp_script
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.run import anonymize_tree

KEYS = Keys(project=b"p" * 32, patient=b"q" * 32)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
PLANTED = {"GRIMSBY", "THADDEUS", "48151623"}
CLEANING = Policy.model_validate({"name": "pixels", "intendedUse": "tests", "patientIdDomain": "tests",
                                  "pixels": {"enabled": True}})


def _render(frame: np.ndarray, text: str, where: tuple[int, int], size: int) -> np.ndarray:
    image = Image.fromarray(frame)
    ImageDraw.Draw(image).text(where, text, font=ImageFont.truetype(FONT, size), fill=(255, 255, 255))
    return np.asarray(image)


def _read(frame: np.ndarray) -> set[str]:
    return {w.text.strip(".,:;").upper() for w in ocr_words(frame) if w.confidence >= 30}


def _anonymize(tmp_path: Path, ds) -> dict:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    ds.save_as(source / "image.dcm")
    report = anonymize_tree(source, tmp_path / "out", CLEANING, KEYS)
    return report["results"][0]


def _planted_ultrasound(name: str):
    ds = dcmread(get_testdata_file(name))
    ds.PatientName, ds.PatientID = "Grimsby^Thaddeus", "48151623"
    frame = _render(ds.pixel_array, "GRIMSBY THADDEUS 48151623", (150, 380), 22)
    return ds, frame


@pytest.mark.slow
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm"])
def test_ultrasound_with_burned_in_identifiers_is_cleaned_and_released(tmp_path, name):
    ds, frame = _planted_ultrasound(name)
    ds.set_pixel_data(frame, "RGB", 8, generate_instance_uid=False)
    before = _read(frame)
    assert PLANTED <= before and {"MED", "CTR"} <= before  # planted text and the real institution
    result = _anonymize(tmp_path, ds)
    assert (result["status"], result["pixels"]) == ("anonymized", "cleaned"), result["reason"]
    released = dcmread(result["output"])
    after = _read(released.pixel_array)
    assert after & (PLANTED | {"BAPTIST", "MED", "CTR", "LYMPH", "NODE"}) == set()
    assert released.BurnedInAnnotation == "NO" and released.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "113101" in [item.CodeValue for item in released.DeidentificationMethodCodeSequence]
    assert not released.pixel_array[:108].any()  # the curated CTP rule for LOGIQ 700 at 640 x 480
    # The image below the overlays is kept: most of the ultrasound sector is untouched.
    sector = (slice(150, 330), slice(100, 540))
    assert np.mean(released.pixel_array[sector] == frame[sector]) > 0.95


@pytest.mark.slow
def test_compressed_multiframe_screen_capture_is_decoded_cleaned_and_written_uncompressed(tmp_path):
    ds = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))  # Secondary Capture, RLE, 2 frames
    ds.PatientName, ds.PatientID = "Grimsby^Thaddeus", "48151623"
    frames = np.zeros((2, 200, 400, 3), dtype=np.uint8)
    frames[:, :, :] = np.kron(ds.pixel_array, np.ones((1, 2, 4, 1), dtype=np.uint8))[:, :200, :400] // 3
    frames = np.stack([_render(frames[i], f"GRIMSBY {48151623 if i else 'THADDEUS'}", (20, 80), 28)
                       for i in range(2)])
    ds.Rows, ds.Columns = 200, 400
    ds.compress(RLELossless, frames, generate_instance_uid=False)
    assert PLANTED <= _read(frames[0]) | _read(frames[1])
    result = _anonymize(tmp_path, ds)
    assert (result["status"], result["pixels"]) == ("anonymized", "cleaned"), result["reason"]
    released = dcmread(result["output"])
    assert released.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and int(released.NumberOfFrames) == 2
    assert (_read(released.pixel_array[0]) | _read(released.pixel_array[1])) & PLANTED == set()


@pytest.mark.slow
def test_pixels_stay_byte_identical_when_no_text_is_found(tmp_path):
    ds = dcmread(get_testdata_file("SC_rgb.dcm"))  # colour bars, no text
    original = ds.PixelData
    result = _anonymize(tmp_path, ds)
    assert (result["status"], result["pixels"]) == ("anonymized", "untouched"), result["reason"]
    released = dcmread(result["output"])
    assert released.PixelData == original and "BurnedInAnnotation" not in released
    assert "113101" not in [item.CodeValue for item in released.DeidentificationMethodCodeSequence]


def test_a_ctp_script_is_imported_as_it_is_and_applied():
    # Written in CTP's DicomPixelAnonymizer format: commentary, [gggg,eeee] and keyword
    # conditions, * + ! and parentheses, several rectangles.
    script = """Site additions
    LOGIQ 700 bottom line
      { Modality.equals("US") * ( [0008,1090].containsIgnoreCase("logiq 700") + Manufacturer.equals("ACME") ) *
        ![0028,0010].equals("1024") }
      (0,440,640,40) (600,0,40,20)
    never
      { [0008,0070].startsWith("NOPE") }
      (0,0,10,10)
    """
    rules = parse_ctp_script(script)
    assert [r.regions for r in rules] == [((0, 440, 640, 40), (600, 0, 40, 20)), ((0, 0, 10, 10),)]
    header = header_snapshot(dcmread(get_testdata_file("US1_UNCR.dcm")))
    assert [rule.matches(header) for rule in rules] == [True, False]
    assert not rules[0].matches({**header, "00280010": "1024"})

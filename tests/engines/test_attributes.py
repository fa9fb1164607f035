"""Reading reports into synthesis decisions: vocabulary values, synonyms and the original's spellings."""

from __future__ import annotations


from ld_augment.engines.attributes import expected_contrast_sign, lesion_spec


def test_reads_shape_density_margin_and_features(make_report) -> None:
    spec = lesion_spec(make_report(shape="irregular", density="low density lesion", density_variations="heterogeneous",
                                   surface_characteristics="ill-defined margin", ct_value=57,
                                   specific_features=["presence of increased density areas", "stone"]))
    assert (spec.shape, spec.density, spec.heterogeneous, spec.margin) == ("irregular", "hypo", True, "ill")
    assert spec.ct_value == 57.0 and spec.stone and spec.bright_areas and not spec.dark_areas
    assert spec.size == (16, 16, 16)


def test_special_densities_and_shapes(make_report) -> None:
    assert lesion_spec(make_report(density="ring enhancement")).density == "ring"
    assert lesion_spec(make_report(shape="cystic", density=None)).density == "fluid"
    assert lesion_spec(make_report(density="hypodense fluid-like lesion")).density == "fluid"
    assert lesion_spec(make_report(density="low-density ground-glass opacity")).density == "ground_glass"
    assert lesion_spec(make_report(shape="irregular,wall thickening")).shape == "wall"
    assert lesion_spec(make_report(shape="nodular")).shape == "punctate"
    assert lesion_spec(make_report(density="high attenuation lesion")).density == "hyper"


def test_expected_contrast_sign(make_report) -> None:
    hypo = lesion_spec(make_report())
    assert expected_contrast_sign(hypo, "liver") == -1
    assert expected_contrast_sign(lesion_spec(make_report(density="isodense lesion")), "liver") == 0
    assert expected_contrast_sign(hypo, "lung_upper_lobe_left") == 1
    assert expected_contrast_sign(lesion_spec(make_report(density="ring enhancement")), "liver") is None

"""What goes in: the categories a clinician would pick, and only the allowed patient fields."""

import json
from datetime import date

import pytest
from pydantic import ValidationError

from tests.gateflow import ROOT, knowledge_for
from worker.categories import CLINICAL_ORDER, categories_for, mentioned, requested_categories
from worker.disclosure import DEFAULT_PATIENT_FIELDS, DisallowedField, parse_fields, patient_for_llm
from worker.facts import clinical_input, input_digest, known_values
from worker.prompt import build_messages
from worker.schemas import ReportGenerationRequest

SAMPLE = json.loads((ROOT / "worker" / "data" / "sample_request.json").read_text())
PLAIN = {"labs": [], "cvd_summary": {}, "assessment": {}, "plan": [], "patient": {"age": 50, "sex": "female"}}

pytestmark = pytest.mark.timeout(30)


def request(**changes) -> ReportGenerationRequest:
    return ReportGenerationRequest.model_validate({**SAMPLE, **changes})


def test_sample_categories_in_clinical_order():
    assert categories_for(request()) == ["cardiovascular", "blood_pressure", "cholesterol", "diabetes",
                                         "weight_management", "nutrition", "physical_activity"]
    assert list(CLINICAL_ORDER[:4]) == ["cardiovascular", "blood_pressure", "cholesterol", "diabetes"]


def test_the_issues_negations_add_nothing():
    text = "non-smoker, no history of diabetes, denies chest pain"
    assert categories_for(request(**{**PLAIN, "assessment": {"summary": text}})) == ["general_health"]


@pytest.mark.parametrize("text, expected", [
    ("Non-smoker. No history of diabetes. Denies chest pain.", set()),
    ("nonsmoker; never smoked; never-smoker; ex-smoker", set()),
    ("Former smoker, quit in 2015.", set()),
    ("No diabetes, hypertension or smoking.", set()),
    ("Diabetes ruled out.", set()),
    ("Family history of heart disease.", set()),
    ("smoking status: never", set()),
    ("Denies chest pain but has type 2 diabetes.", {"diabetes"}),
    ("non-smoker, type 2 diabetes", {"diabetes"}),
    ("Current smoker, 10 cigarettes a day.", {"smoking_cessation"}),
    ("Wants to quit smoking.", {"smoking_cessation"}),
    ("Previous heart attack in 2019.", {"cardiovascular"}),
    ("Hypertension; BMI 31.", {"blood_pressure", "weight_management"}),
    ({"smoker": False, "diabetes": "no"}, set()),
    ({"smoking_status": "current"}, {"smoking_cessation"}),
])
def test_negation_aware_mentions(text, expected):
    assert mentioned(text) == expected


@pytest.mark.parametrize("patient, expected", [
    ({"age": 40, "smoker": True}, ["smoking_cessation"]),
    ({"age": 40, "smoking_status": "Current every day"}, ["smoking_cessation"]),
    ({"age": 40, "smoking_status": "former"}, ["general_health"]),
    ({"age": 40, "smoker": False}, ["general_health"]),
    ({"age": 40, "diabetes": True}, ["diabetes"]),
    ({"age": 40, "bmi": 31}, ["weight_management"]),
    ({"age": 40, "bmi": 17.9}, ["weight_management"]),
    ({"age": 40, "bmi": 22}, ["general_health"]),
    ({"age": 40, "height_cm": 178, "weight_kg": 91}, ["weight_management"]),
    ({"age": 40, "systolic_bp": 150, "diastolic_bp": 95}, ["blood_pressure"]),
    ({"age": 40, "conditions": ["hypertension", "no diabetes"]}, ["blood_pressure"]),
    ({"age": 40, "medications": [{"name": "atorvastatin"}]}, ["cholesterol"]),
    ({"name": "Smokey Robinson", "age": 40}, ["general_health"]),  # a name is not a finding
])
def test_structured_patient_fields_count(patient, expected):
    assert categories_for(request(**{**PLAIN, "patient": patient})) == expected


def test_labs_and_plan_name_categories_by_field_alias_or_keyword():
    labs = [{"name": "LDL-C", "value": 130}, {"name": "Fasting glucose"}, {"test": "BP systolic"},
            {"name": "Something", "category": "lipids"}]
    plan = [{"category": "Physical Activity"}, {"category": "medication", "action": "Start a statin"},
            "Cut down on salt", "No need to change your diet"]
    assert categories_for(request(**{**PLAIN, "labs": labs, "plan": plan})) == [
        "blood_pressure", "cholesterol", "diabetes", "nutrition", "physical_activity"]
    assert categories_for(request(**{**PLAIN, "cvd_summary": {"ten_year_risk_percent": 7.5}})) == ["cardiovascular"]


def test_explicit_categories_win_and_are_put_in_clinical_order():
    chosen = request(categories=["Physical Activity", "lipids", "diabetes", "diabetes"])
    assert chosen.categories == ["cholesterol", "diabetes", "physical_activity"]
    assert categories_for(chosen) == ["cholesterol", "diabetes", "physical_activity"]
    assert requested_categories(None) is None


@pytest.mark.parametrize("bad", [["statins"], [], "diabetes", [1], ["diabetes", None]])
def test_unknown_or_empty_categories_are_invalid_input(bad):
    with pytest.raises(ValidationError) as info:
        ReportGenerationRequest.model_validate_json(json.dumps({**SAMPLE, "categories": bad}))
    assert "categories" in str(info.value)


PHI_PATIENT = {
    "name": "Zoë Łukasiewicz", "first_name": "Zoë", "lastName": "Łukasiewicz", "patient_id": 10077, "id": "p-1",
    "mrn": 998877, "medicalRecordNumber": "MRN-55", "insurance_number": "INS-1", "insuranceId": 4,
    "date_of_birth": "1960-05-02", "address": {"street": "Main St 1"}, "zip": "10115", "phone": "+1 555 0100",
    "email": "zoe@example.org", "ssn": "123-45-6789", "emergency_contact": {"name": "Bob"},
    "age": None, "sex": "female", "smoker": False, "bmi": 27.2, "weight_kg": 71, "height_cm": 163,
    "medications": [{"name": "atorvastatin", "dose": "20 mg", "prescriber": "Dr. Roe", "prescriber_phone": "555"}],
    "conditions": ["prediabetes"], "favourite_colour": "blue",
}


def test_patient_filter_keeps_clinical_fields_and_drops_identifiers():
    shared = patient_for_llm(PHI_PATIENT, today=date(2026, 1, 15))
    assert shared == {"sex": "female", "smoker": False, "bmi": 27.2, "weight_kg": 71, "height_cm": 163,
                      "medications": [{"name": "atorvastatin", "dose": "20 mg"}], "conditions": ["prediabetes"],
                      "age": 65}


def test_age_from_birth_date_capped_at_90_and_never_the_date():
    assert patient_for_llm({"dob": "1931-02-03"}, today=date(2026, 1, 15)) == {"age": "90 or older"}
    assert patient_for_llm({"age": 93}) == {"age": "90 or older"}
    assert patient_for_llm({"dateOfBirth": "not a date"}) == {}
    assert patient_for_llm({"age": 56, "date_of_birth": "1931-02-03"}) == {"age": 56}


def test_configured_fields_never_include_identifiers():
    assert parse_fields("") == DEFAULT_PATIENT_FIELDS
    assert parse_fields("age, Sex,bmi,weightKg") == ("age", "sex", "bmi", "weight_kg")
    for bad in ("age,name", "mrn", "date_of_birth", "insurance_number", "email", "patient_id", "phone"):
        with pytest.raises(DisallowedField):
            parse_fields(bad)
    assert patient_for_llm({"age": 50, "name": "X", "bmi": 30}, fields=("age", "name")) == {"age": 50}


def test_the_prompt_carries_no_identifier_of_the_patient():
    req = request(patient=PHI_PATIENT)
    messages = build_messages(req, knowledge_for(categories_for(req)), categories_for(req))
    text = json.dumps(messages, ensure_ascii=False)
    for value in ("Zoë", "Łukasiewicz", "10077", "998877", "MRN-55", "INS-1", "1960", "Main St", "10115",
                  "555", "zoe@example.org", "123-45-6789", "Bob", "Dr. Roe", "p-1", "blue"):
        assert value not in text, value
    assert json.loads(messages[1]["content"])["untrusted_record"]["patient"]["conditions"] == ["prediabetes"]


def test_numbers_the_model_may_state_come_from_what_it_is_shown():
    req = request(patient={**PHI_PATIENT, "age": 56})
    known = {str(value) for value in known_values(req)}
    assert {"162", "6.1", "11.8", "180", "120", "56", "27.2"} <= known
    assert "998877" not in known and "10077" not in known


def test_audit_input_and_its_digest_ignore_only_the_request_id():
    first, second = request(request_id="a-1"), request(request_id="b-2")
    assert clinical_input(first) == clinical_input(second) and "request_id" not in clinical_input(first)
    assert input_digest(first) == input_digest(second) and len(input_digest(first)) == 64
    assert input_digest(request(labs=[])) != input_digest(first)
    assert clinical_input(first)["patient"] == SAMPLE["patient"]

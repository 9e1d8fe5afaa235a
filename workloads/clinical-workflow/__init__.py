"""clinical-workflow: NEWS2, BPMN-driven clinical Tasks (FHIR Workflow), alarm follow-up and CDS Hooks at the edge."""

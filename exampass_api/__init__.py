"""ExamPass prediction service: FastAPI app serving the MLflow champion (see ``exampass_api.app``).

Deliberately empty of imports: importing ``exampass_api.schemas`` or the console script must not pull in
MLflow, scikit-learn or the app.
"""

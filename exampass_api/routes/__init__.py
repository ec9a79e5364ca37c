"""The HTTP routes, one module per concern; each is an APIRouter that ``create_app`` includes."""

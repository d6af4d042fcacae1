"""jaxdeca.models."""

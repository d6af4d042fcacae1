"""jaxdeca.evaluation."""

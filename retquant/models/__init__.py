"""Small models built from :mod:`retquant.nn`: a RetNet language model."""

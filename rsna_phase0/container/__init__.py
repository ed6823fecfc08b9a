"""Running the Docker image through the Docker SDK (`rsna-phase0 docker ...`)."""

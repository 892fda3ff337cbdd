"""The Python client of teleconsult: signaling, media, and the publish/subscribe tools."""

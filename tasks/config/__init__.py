"""The controller's configuration: what a user may set, declared once. Nothing here touches a host."""

"""The backup server: state store, services, dispatcher, scheduler, REST API."""

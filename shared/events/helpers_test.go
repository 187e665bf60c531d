package events

import (
	"errors"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

func errorsIsUnavailable(err error) bool { return errors.Is(err, domain.ErrUnavailable) }

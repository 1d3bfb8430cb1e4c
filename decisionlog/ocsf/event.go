package ocsf

// SchemaVersion is the OCSF schema version the events conform to (metadata.version).
const SchemaVersion = "1.9.0-dev"

// MappingVersion names this mapping (metadata.log_version). It changes whenever an OCSF field
// is filled differently, so that a SIEM's parsers can tell mappings apart.
const MappingVersion = "custody.ocsf.v1"

// OCSF classes, categories and enum values used by the mapping.
const (
	ClassAPIActivity  = 6003
	ClassBaseEvent    = 0
	CategoryApp       = 6
	CategoryOther     = 0
	ActivityUnknown   = 0
	ActivityOther     = 99
	ActionAllowed     = 1
	ActionDenied      = 2
	ActionObserved    = 3
	DispositionAllow  = 1
	DispositionBlock  = 2
	DispositionLogged = 17
	DispositionAlert  = 19
	StatusSuccess     = 1
	StatusFailure     = 2
	StatusOther       = 99
	SeverityInfo      = 1
	SeverityLow       = 2
	SeverityMedium    = 3
	SeverityHigh      = 4
)

// Event is one OCSF event. Fields follow the OCSF attribute names; empty ones are left out.
type Event struct {
	ClassUID      int    `json:"class_uid"`
	ClassName     string `json:"class_name"`
	CategoryUID   int    `json:"category_uid"`
	CategoryName  string `json:"category_name"`
	ActivityID    int    `json:"activity_id"`
	ActivityName  string `json:"activity_name,omitempty"`
	TypeUID       int64  `json:"type_uid"`
	TypeName      string `json:"type_name,omitempty"`
	Time          int64  `json:"time"`
	SeverityID    int    `json:"severity_id"`
	Severity      string `json:"severity"`
	Message       string `json:"message,omitempty"`
	StatusID      int    `json:"status_id,omitempty"`
	Status        string `json:"status,omitempty"`
	StatusCode    string `json:"status_code,omitempty"`
	StatusDetail  string `json:"status_detail,omitempty"`
	ActionID      *int   `json:"action_id,omitempty"`
	Action        string `json:"action,omitempty"`
	DispositionID *int   `json:"disposition_id,omitempty"`
	Disposition   string `json:"disposition,omitempty"`
	IsAlert       *bool  `json:"is_alert,omitempty"`

	Metadata    Metadata   `json:"metadata"`
	Actor       *Actor     `json:"actor,omitempty"`
	AIAgent     *AIAgent   `json:"ai_agent,omitempty"`
	API         *API       `json:"api,omitempty"`
	SrcEndpoint *Endpoint  `json:"src_endpoint,omitempty"`
	Resources   []Resource `json:"resources,omitempty"`
	Policy      *Policy    `json:"policy,omitempty"`
	Trace       *Trace     `json:"trace,omitempty"`
	RawData     string     `json:"raw_data,omitempty"`
	Unmapped    *Unmapped  `json:"unmapped,omitempty"`
}

// Metadata is OCSF's metadata object.
type Metadata struct {
	UID            string   `json:"uid,omitempty"`
	CorrelationUID string   `json:"correlation_uid,omitempty"`
	Version        string   `json:"version"`
	Product        Product  `json:"product"`
	Profiles       []string `json:"profiles,omitempty"`
	LogName        string   `json:"log_name,omitempty"`
	LogProvider    string   `json:"log_provider,omitempty"`
	LogVersion     string   `json:"log_version,omitempty"`
	EventCode      string   `json:"event_code,omitempty"`
	Sequence       *uint64  `json:"sequence,omitempty"`
	OriginalTime   string   `json:"original_time,omitempty"`
}

// Product names custody and its version.
type Product struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
	Version    string `json:"version,omitempty"`
	Feature    *struct {
		Name string `json:"name"`
	} `json:"feature,omitempty"`
}

// Actor is who initiated the activity: the delegating human, and the client application that
// asked custody.
type Actor struct {
	User    *User    `json:"user,omitempty"`
	AppName string   `json:"app_name,omitempty"`
	AppUID  string   `json:"app_uid,omitempty"`
	Session *Session `json:"session,omitempty"`
}

// User is OCSF's user object.
type User struct {
	UID    string `json:"uid,omitempty"`
	Name   string `json:"name,omitempty"`
	TypeID int    `json:"type_id"`
	Type   string `json:"type,omitempty"`
}

// Session is OCSF's session object: the agent task's session.
type Session struct {
	UID string `json:"uid"`
}

// AIAgent is the ai_operation profile's ai_agent: the acting workload.
type AIAgent struct {
	UID        string `json:"uid,omitempty"`
	Name       string `json:"name,omitempty"`
	InstanceID string `json:"instance_uid,omitempty"`
	TypeID     int    `json:"type_id"`
	Type       string `json:"type,omitempty"`
}

// API is the call that was authorized or executed.
type API struct {
	Operation string   `json:"operation"`
	Service   *Service `json:"service,omitempty"`
	Request   *Request `json:"request,omitempty"`
}

// Service is OCSF's service object: the MCP server or downstream system.
type Service struct {
	Name string `json:"name"`
}

// Request is OCSF's request object.
type Request struct {
	UID  string         `json:"uid"`
	Data map[string]any `json:"data,omitempty"`
}

// Endpoint is OCSF's network_endpoint, as far as custody knows it.
type Endpoint struct {
	UID  string `json:"uid,omitempty"`
	Name string `json:"name,omitempty"`
}

// Resource is OCSF's resource_details: the target.
type Resource struct {
	UID  string         `json:"uid,omitempty"`
	Name string         `json:"name,omitempty"`
	Type string         `json:"type,omitempty"`
	Data map[string]any `json:"data,omitempty"`
}

// Policy is the rule (query) and revision that decided.
type Policy struct {
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
	Version   string `json:"version,omitempty"`
	IsApplied bool   `json:"is_applied"`
}

// Trace carries the W3C trace context the caller sent.
type Trace struct {
	UID  string `json:"uid"`
	Span *Span  `json:"span,omitempty"`
}

// Span is the caller's span. OCSF requires its start and end; custody knows only when it
// decided within it, so both are the decision's time.
type Span struct {
	UID       string `json:"uid"`
	StartTime int64  `json:"start_time"`
	EndTime   int64  `json:"end_time"`
}

// Unmapped holds what has no OCSF home, under one key so it never collides with a SIEM's own.
type Unmapped struct {
	Custody map[string]any `json:"custody"`
}

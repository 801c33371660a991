// Command ollamatmpl renders an Ollama Modelfile TEMPLATE with Go's own text/template, handing it the data Ollama
// 0.33.0 hands it (template/template.go: Execute -> collate -> convertMessagesForTemplate/convertToolsForTemplate),
// so `tooltune check-backends` and the tests can compare a generated TEMPLATE with the Jinja chat template it
// replaces. Shipped as a package resource and built once with `go build` (tooltune.serve.go_template).
//
// Emulated from Ollama 0.33.0 (read, not imported: this harness has no dependencies):
//   - messages decode as api.Message (role lower-cased), then collate: system contents joined with "\n\n" into
//     .System, consecutive messages of one role merged with "\n\n" except tool messages;
//   - .Messages items are templateMessage{Role, Content, Thinking, Images, ToolCalls, ToolName, ToolCallID} with
//     ToolCalls []templateToolCall{ID, Function{Index, Name, Arguments templateArgs}} and templateArgs a plain
//     map[string]any (so ranging and json sort the keys);
//   - .Tools is templateTools ([]templateTool{Type, Items, Function{Name, Description, Parameters{Type, $defs,
//     items, required, properties}}}) with properties a plain map[string]ToolProperty; ToolProperty keeps Ollama's
//     field set (anyOf, type, items, description, enum, properties, required: other schema keys are dropped on
//     decode, as in Ollama) and nested properties keep insertion order;
//   - functions: json (encoding/json.Marshal), currentDate, yesterdayDate; option missingkey=zero;
//   - .Think / .IsThinkSet from the request's `think` (a case's optional "think": true|false; absent: not set),
//     .ThinkLevel empty (levels are gpt-oss's).
//
// Input (stdin): a JSON list of {"template": str, "messages": [...], "tools": [...], "think": bool (optional)}.
// Output (stdout): a JSON list of {"output": str} or {"error": str}, one per case.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

// ---- api types (the subset templates can see) ----

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *ToolPropertiesMap `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

// ToolPropertiesMap keeps insertion order, like Ollama's orderedmap-backed type.
type ToolPropertiesMap struct {
	keys   []string
	values map[string]ToolProperty
}

func (m *ToolPropertiesMap) UnmarshalJSON(data []byte) error {
	m.values = map[string]ToolProperty{}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string)
		var prop ToolProperty
		if err := dec.Decode(&prop); err != nil {
			return err
		}
		if _, seen := m.values[key]; !seen {
			m.keys = append(m.keys, key)
		}
		m.values[key] = prop
	}
	return nil
}

func (m *ToolPropertiesMap) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, key := range m.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		v, err := json.Marshal(m.values[key])
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (m *ToolPropertiesMap) ToMap() map[string]ToolProperty {
	if m == nil {
		return nil
	}
	out := make(map[string]ToolProperty, len(m.keys))
	for k, v := range m.values {
		out[k] = v
	}
	return out
}

type ToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties *ToolPropertiesMap `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

type ToolCallFunction struct {
	Index     int            `json:"index"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// ---- template-side types (Ollama 0.33.0 template/template.go) ----

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateTools []templateTool

func (t templateTools) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func convertMessages(messages []*Message) []*templateMessage {
	if messages == nil {
		return nil
	}
	out := make([]*templateMessage, len(messages))
	for i, m := range messages {
		var calls []templateToolCall
		for _, tc := range m.ToolCalls {
			calls = append(calls, templateToolCall{ID: tc.ID, Function: templateToolCallFunction{
				Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments),
			}})
		}
		out[i] = &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images,
			ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID}
	}
	return out
}

func convertTools(tools []Tool) templateTools {
	if tools == nil {
		return nil
	}
	out := make(templateTools, len(tools))
	for i, t := range tools {
		out[i] = templateTool{Type: t.Type, Items: t.Items, Function: templateToolFunction{
			Name: t.Function.Name, Description: t.Function.Description,
			Parameters: templateToolFunctionParameters{
				Type: t.Function.Parameters.Type, Defs: t.Function.Parameters.Defs,
				Items: t.Function.Parameters.Items, Required: t.Function.Parameters.Required,
				Properties: templateProperties(t.Function.Parameters.Properties.ToMap()),
			},
		}}
	}
	return out
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
}

type testCase struct {
	Template string          `json:"template"`
	Messages json.RawMessage `json:"messages"`
	Tools    json.RawMessage `json:"tools"`
	// Think is the request's `think` (api.ThinkValue): absent leaves .IsThinkSet false, true/false set .Think.
	Think *bool `json:"think,omitempty"`
}

type outcome struct {
	Output *string `json:"output,omitempty"`
	Error  string  `json:"error,omitempty"`
}

func render(c testCase) (string, error) {
	var messages []Message
	if err := json.Unmarshal(c.Messages, &messages); err != nil {
		return "", fmt.Errorf("messages: %w", err)
	}
	for i := range messages {
		messages[i].Role = strings.ToLower(messages[i].Role)
	}
	var tools []Tool
	if len(c.Tools) > 0 && string(c.Tools) != "null" {
		if err := json.Unmarshal(c.Tools, &tools); err != nil {
			return "", fmt.Errorf("tools: %w", err)
		}
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(c.Template)
	if err != nil {
		return "", err
	}
	system, collated := collate(messages)
	think, isThinkSet := false, c.Think != nil
	if isThinkSet {
		think = *c.Think
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System": system, "Messages": convertMessages(collated), "Tools": convertTools(tools),
		"Response": "", "Think": think, "ThinkLevel": "", "IsThinkSet": isThinkSet,
	})
	return b.String(), err
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "input:", err)
		os.Exit(2)
	}
	results := make([]outcome, len(cases))
	for i, c := range cases {
		out, err := render(c)
		if err != nil {
			results[i] = outcome{Error: err.Error()}
		} else {
			results[i] = outcome{Output: &out}
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "output:", err)
		os.Exit(2)
	}
}

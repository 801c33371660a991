# ruff: noqa: E501  (template text is kept on its own lines, as it renders)
"""Write src/tooltune/resources/ollama/llama3.2.gotmpl: tooltune's own Go TEMPLATE in Llama 3.2's tool layout.

Go templates cannot compute indentation, and Llama 3.2's template prints tools with ``tojson(indent=4)``, so the
indented-JSON printers are generated here, one per depth. Run after editing this file; the result is committed.
"""

from __future__ import annotations

from pathlib import Path

MAX_DEPTH = 12
MAP_TYPES = '"map[string]interface {}" "main.templateArgs" "template.templateArgs"'
LIST_TYPES = '"[]interface {}" "[]string"'


def nl(depth: int) -> str:
    return '{{ "\\n' + " " * (4 * depth) + '" }}'


def value(depth: int) -> str:
    """Any JSON value (maps with sorted keys, as Go ranges them) at ``depth``, like json.dumps(indent=4)."""
    if depth >= MAX_DEPTH:
        return f'{{{{- define "v{depth}" }}}}{{{{ json . }}}}{{{{ end }}}}\n'
    inner = f'v{depth + 1}'
    return (
        f'{{{{- define "v{depth}" }}}}{{{{ $type := printf "%T" . }}}}'
        f'{{{{ if eq $type {MAP_TYPES} }}}}{{{{ if . }}}}{{{{ "{{" }}}}{{{{ $first := true }}}}'
        f'{{{{ range $k, $v := . }}}}{{{{ if not $first }}}},{{{{ end }}}}{{{{ $first = false }}}}{nl(depth + 1)}'
        f'{{{{ printf "%q" $k }}}}: {{{{ template "{inner}" $v }}}}{{{{ end }}}}{nl(depth)}}}{{{{ else }}}}{{{{ "{{}}" }}}}{{{{ end }}}}'
        f'{{{{ else if eq $type {LIST_TYPES} }}}}{{{{ if . }}}}[{{{{ range $i, $v := . }}}}{{{{ if $i }}}},{{{{ end }}}}'
        f'{nl(depth + 1)}{{{{ template "{inner}" $v }}}}{{{{ end }}}}{nl(depth)}]{{{{ else }}}}[]{{{{ end }}}}'
        f'{{{{ else if eq $type "string" }}}}{{{{ printf "%q" . }}}}'
        f'{{{{ else }}}}{{{{ json . }}}}{{{{ end }}}}{{{{ end }}}}\n'
    )


def prop(depth: int) -> str:
    """One of Ollama's ToolProperty structs at ``depth``, keys in canonicalize_for_ollama's order."""
    if depth >= MAX_DEPTH - 1:
        return f'{{{{- define "p{depth}" }}}}{{{{ json . }}}}{{{{ end }}}}\n'
    d1 = depth + 1

    def field(condition: str, key: str, body: str) -> str:
        return (f'{{{{ if {condition} }}}}{{{{ if not $first }}}},{{{{ end }}}}{{{{ $first = false }}}}{nl(d1)}'
                f'"{key}": {body}{{{{ end }}}}')

    type_body = (f'{{{{ if eq (len .Type) 1 }}}}{{{{ printf "%q" (index .Type 0) }}}}{{{{ else }}}}['
                 f'{{{{ range $i, $t := .Type }}}}{{{{ if $i }}}},{{{{ end }}}}{nl(depth + 2)}{{{{ printf "%q" $t }}}}'
                 f'{{{{ end }}}}{nl(d1)}]{{{{ end }}}}')
    props_body = (f'{{{{ $m := .Properties.ToMap }}}}{{{{ if $m }}}}{{{{ "{{" }}}}{{{{ $pfirst := true }}}}'
                  f'{{{{ range $name, $p := $m }}}}{{{{ if not $pfirst }}}},{{{{ end }}}}{{{{ $pfirst = false }}}}'
                  f'{nl(depth + 2)}{{{{ printf "%q" $name }}}}: {{{{ template "p{depth + 2}" $p }}}}{{{{ end }}}}'
                  f'{nl(d1)}}}{{{{ else }}}}{{{{ "{{}}" }}}}{{{{ end }}}}')
    return (
        f'{{{{- define "p{depth}" }}}}{{{{ if or .Type .Items .Description .Enum .Properties .Required }}}}'
        f'{{{{ "{{" }}}}{{{{ $first := true }}}}'
        + field(".Type", "type", type_body)
        + field(".Items", "items", f'{{{{ template "v{d1}" .Items }}}}')
        + field(".Description", "description", '{{ printf "%q" .Description }}')
        + field(".Enum", "enum", f'{{{{ template "v{d1}" .Enum }}}}')
        + field(".Properties", "properties", props_body)
        + field(".Required", "required", f'{{{{ template "v{d1}" .Required }}}}')
        + f'{nl(depth)}}}{{{{ else }}}}{{{{ "{{}}" }}}}{{{{ end }}}}{{{{ end }}}}\n'
    )


TOOL = (
    '{{- define "tool" }}{{ "{" }}' + nl(1) + '"type": {{ printf "%q" .Type }},' + nl(1) + '"function": {{ "{" }}'
    + nl(2) + '"name": {{ printf "%q" .Function.Name }},'
    + '{{ if .Function.Description }}' + nl(2) + '"description": {{ printf "%q" .Function.Description }},{{ end }}'
    + nl(2) + '"parameters": {{ "{" }}' + nl(3) + '"type": {{ printf "%q" .Function.Parameters.Type }},'
    + nl(3) + '"properties": {{ if .Function.Parameters.Properties }}{{ "{" }}{{ $first := true }}'
    '{{ range $name, $p := .Function.Parameters.Properties }}{{ if not $first }},{{ end }}{{ $first = false }}'
    + nl(4) + '{{ printf "%q" $name }}: {{ template "p4" $p }}{{ end }}' + nl(3) + '}{{ else }}{{ "{}" }}{{ end }}'
    + '{{ if .Function.Parameters.Required }},' + nl(3) + '"required": {{ template "v3" .Function.Parameters.Required }}'
    '{{ end }}' + nl(2) + '}' + nl(1) + '}' + nl(0) + '}{{ end }}\n'
)

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DATE = ('{{ $d := currentDate }}{{ slice $d 8 10 }} {{ $m := slice $d 5 7 }}'
        + "".join(f'{{{{ {"if" if i == 0 else "else if"} eq $m "{i + 1:02d}" }}}}{name}' for i, name in enumerate(MONTHS))
        + '{{ end }} {{ slice $d 0 4 }}')

BODY = r'''{{- $start := 0 }}{{ $system := "" }}
{{- if and .Messages (eq (index .Messages 0).Role "system") }}{{ $start = 1 }}{{ $system = (index .Messages 0).Content }}{{ end }}
{{- $firstUser := -1 }}{{ if .Tools }}{{ $firstUser = $start }}{{ end }}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- if .Tools }}Environment: ipython
{{ end }}Cutting Knowledge Date: December 2023
Today Date: __DATE__

{{ $system }}<|eot_id|>
{{- $previous := "" }}
{{- range $i, $message := .Messages }}
{{- if lt $i $start }}
{{- else if eq $i $firstUser }}<|start_header_id|>user<|end_header_id|>

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.

{{ range $.Tools }}{{ template "tool" . }}

{{ end }}{{ .Content }}<|eot_id|>
{{- else if eq .Role "tool" "ipython" }}<|start_header_id|>ipython<|end_header_id|>

{{ printf "%q" .Content }}<|eot_id|>
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ if .ToolCalls }}{"name": "{{ (index .ToolCalls 0).Function.Name }}", "parameters": {{ template "json" (index .ToolCalls 0).Function.Arguments }}}
{{- range slice .ToolCalls 1 }}; {"name": "{{ .Function.Name }}", "parameters": {{ template "json" .Function.Arguments }}}{{ end }}{{ else }}{{ .Content }}{{ end }}<|eot_id|>
{{- else }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- $previous = .Role }}
{{- end }}
{{- if ne $previous "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}'''


ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/tooltune/resources/ollama/llama3.2.gotmpl"


def build() -> str:
    """The TEMPLATE text (tests compare it with the committed file)."""
    qwen3 = (ROOT / "src/tooltune/resources/ollama/qwen3.gotmpl").read_text(encoding="utf-8")
    json_define = qwen3[: qwen3.index('{{- define "property" -}}')]  # compact JSON with Python's separators
    parts = [json_define]
    parts += [value(d) for d in range(MAX_DEPTH + 1)]
    parts += [prop(d) for d in range(4, MAX_DEPTH + 1, 2)]
    parts.append(TOOL)
    parts.append(BODY.replace("__DATE__", DATE))
    return "".join(parts) + "\n"


def main() -> None:
    OUT.write_text(build(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

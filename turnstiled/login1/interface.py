"""How an interface is written down here: its properties, methods and
signals as data, from which calls are dispatched and introspection XML is
made. Each of manager.py, session.py, user.py, seat.py holds one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr


@dataclass(frozen=True)
class Prop:
    signature: str
    get: Callable[[Any, Any], Any]  # (context, object) -> value
    # logind marks properties whose changes it signals; the rest are
    # read afresh (EmitsChangedSignal=false), as ours are unless listed.
    emits_change: bool = False


@dataclass(frozen=True)
class Method:
    in_sig: str
    out_sig: str
    # (call, object, *args) -> the reply's body (a list)
    run: Callable[..., Awaitable[list]]
    in_names: tuple[str, ...] = ()
    out_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interface:
    name: str
    props: dict[str, Prop] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    # name -> [(arg name, signature)]
    signals: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def xml(self) -> str:
        out = [f"  <interface name={quoteattr(self.name)}>"]
        for name, prop in self.props.items():
            emits = "" if prop.emits_change else (
                '><annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" '
                'value="false"/></property')
            out.append(f'    <property name="{name}" type="{prop.signature}" access="read"'
                       + (emits or "/") + ">")
        for name, m in self.methods.items():
            out.append(f'    <method name="{name}">')
            out += [f'      <arg name="{n}" type="{t}" direction="in"/>'
                    for n, t in zip(m.in_names, _split(m.in_sig), strict=True)]
            out += [f'      <arg name="{n}" type="{t}" direction="out"/>'
                    for n, t in zip(m.out_names, _split(m.out_sig), strict=True)]
            out.append("    </method>")
        for name, args in self.signals.items():
            out.append(f'    <signal name="{name}">')
            out += [f'      <arg name="{n}" type="{t}"/>' for n, t in args]
            out.append("    </signal>")
        out.append("  </interface>")
        return "\n".join(out)


def _split(signature: str) -> list[str]:
    """A signature's complete types, one each."""
    out, i = [], 0
    while i < len(signature):
        j = _end(signature, i)
        out.append(signature[i:j])
        i = j
    return out


def _end(sig: str, i: int) -> int:
    ch = sig[i]
    if ch == "a":
        return _end(sig, i + 1)
    if ch in "({":
        close = ")" if ch == "(" else "}"
        i += 1
        while sig[i] != close:
            i = _end(sig, i)
        return i + 1
    return i + 1


STANDARD_XML = """  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg type="s" name="machine_uuid" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg name="interface_name" direction="in" type="s"/>
      <arg name="property_name" direction="in" type="s"/>
      <arg name="value" direction="out" type="v"/></method>
    <method name="GetAll"><arg name="interface_name" direction="in" type="s"/>
      <arg name="props" direction="out" type="a{sv}"/></method>
    <method name="Set"><arg name="interface_name" direction="in" type="s"/>
      <arg name="property_name" direction="in" type="s"/>
      <arg name="value" direction="in" type="v"/></method>
    <signal name="PropertiesChanged"><arg type="s" name="interface_name"/>
      <arg type="a{sv}" name="changed_properties"/>
      <arg type="as" name="invalidated_properties"/></signal>
  </interface>
"""


def node_xml(interfaces: list[Interface], children: list[str]) -> str:
    head = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node>\n')
    body = STANDARD_XML + "".join(i.xml() + "\n" for i in interfaces) if interfaces else ""
    kids = "".join(f' <node name={quoteattr(c)}/>\n' for c in children)
    return head + body + kids + "</node>\n"

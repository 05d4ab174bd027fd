-- Wireshark dissector for mirror-agent's GENEVE copies: the GENEVE header
-- (RFC 8926) and the mirror's options, class 0xFFF0, each by name, then the
-- mirrored Ethernet frame. Wireshark's own GENEVE dissector shows these
-- options as "Unknown"; this one takes UDP port 6081 over from it.
--
-- Load it for one run:
--   tshark -X lua_script:deploy/wireshark/mirror-geneve.lua -r copies.pcapng -V
--   wireshark -X lua_script:deploy/wireshark/mirror-geneve.lua copies.pcapng
-- or for good: copy it into Wireshark's personal Lua plugin folder
-- (~/.local/lib/wireshark/plugins/ on Linux; Help > About Wireshark >
-- Folders names it), and restart Wireshark.
--
-- Filter fields: mirror_geneve.vni, .orig_len, .direction, .ifindex, .node,
-- .pod (the pod's namespace/name; the interface name under `attach`),
-- .capture_time (and .capture_ns, the same in nanoseconds since the epoch),
-- .option.class, .option.type. The options are described in
-- mirror-agent/src/export/encap/geneve.rs and in the README ("Outputs").

local CLASS = 0xFFF0

local option_names = {
    [0x01] = "Original length",
    [0x02] = "Direction",
    [0x03] = "Interface index",
    [0x04] = "Node name",
    [0x05] = "Pod (or interface) name",
    [0x06] = "Capture time",
}

local p = Proto("mirror_geneve", "GENEVE (mirror-agent)")

local f = {
    version = ProtoField.uint8("mirror_geneve.version", "Version", base.DEC, nil, 0xC0),
    opt_len = ProtoField.uint8("mirror_geneve.opt_len", "Options length (words)", base.DEC, nil, 0x3F),
    oam = ProtoField.bool("mirror_geneve.oam", "OAM frame", 8, nil, 0x80),
    critical = ProtoField.bool("mirror_geneve.critical", "Critical options present", 8, nil, 0x40),
    proto_type = ProtoField.uint16("mirror_geneve.proto_type", "Protocol type", base.HEX),
    vni = ProtoField.uint24("mirror_geneve.vni", "Virtual network identifier (VNI)", base.DEC),
    reserved = ProtoField.uint8("mirror_geneve.reserved", "Reserved", base.HEX),
    option = ProtoField.none("mirror_geneve.option", "Option"),
    opt_class = ProtoField.uint16("mirror_geneve.option.class", "Class", base.HEX),
    opt_type = ProtoField.uint8("mirror_geneve.option.type", "Type", base.HEX, option_names),
    opt_length = ProtoField.uint8("mirror_geneve.option.length", "Length (words)", base.DEC, nil, 0x1F),
    orig_len = ProtoField.uint32("mirror_geneve.orig_len", "Original length", base.DEC),
    direction = ProtoField.uint32("mirror_geneve.direction", "Direction", base.DEC,
        { [0] = "ingress", [1] = "egress" }),
    ifindex = ProtoField.uint32("mirror_geneve.ifindex", "Interface index", base.DEC),
    node = ProtoField.string("mirror_geneve.node", "Node name"),
    pod = ProtoField.string("mirror_geneve.pod", "Pod (or interface) name"),
    capture_time = ProtoField.absolute_time("mirror_geneve.capture_time", "Capture time", base.UTC),
    capture_ns = ProtoField.uint64("mirror_geneve.capture_ns", "Capture time (ns since the epoch)"),
    data = ProtoField.bytes("mirror_geneve.option.data", "Option data"),
}
p.fields = f

local e_bad = ProtoExpert.new("mirror_geneve.bad", "Malformed option",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_unknown = ProtoExpert.new("mirror_geneve.unknown", "Option type of the mirror's class this script does not know",
    expert.group.UNDECODED, expert.severity.WARN)
p.experts = { e_bad, e_unknown }

local eth = Dissector.get("eth_withoutfcs")
local ethertype = DissectorTable.get("ethertype")
local billion = UInt64.new(1000000000)

-- The option's data as text, without its NUL padding (a name that fills
-- its words has none, so this must not read up to a NUL).
local function text(range)
    return (range:raw():gsub("%z+$", ""))
end

local function mirror_option(tree, kind, data)
    local len = data:len()
    if kind == 0x01 or kind == 0x02 or kind == 0x03 then
        if len ~= 4 then return tree:add_proto_expert_info(e_bad) end
        local field = ({ [1] = f.orig_len, [2] = f.direction, [3] = f.ifindex })[kind]
        tree:add(field, data)
    elseif kind == 0x04 or kind == 0x05 then
        tree:add(kind == 0x04 and f.node or f.pod, data, text(data))
    elseif kind == 0x06 then
        if len ~= 8 then return tree:add_proto_expert_info(e_bad) end
        local ns = data:uint64()
        local t = NSTime.new((ns / billion):tonumber(), (ns % billion):tonumber())
        tree:add(f.capture_time, data, t)
        tree:add(f.capture_ns, data)
    else
        tree:add(f.data, data)
        tree:add_proto_expert_info(e_unknown)
    end
end

function p.dissector(tvb, pinfo, root)
    if tvb:len() < 8 then return 0 end
    local opt_words = bit.band(tvb(0, 1):uint(), 0x3F)
    local header = 8 + opt_words * 4
    if tvb:len() < header then return 0 end
    pinfo.cols.protocol = "GENEVE"
    local tree = root:add(p, tvb(0, header))
    tree:add(f.version, tvb(0, 1))
    tree:add(f.opt_len, tvb(0, 1))
    tree:add(f.oam, tvb(1, 1))
    tree:add(f.critical, tvb(1, 1))
    tree:add(f.proto_type, tvb(2, 2))
    tree:add(f.vni, tvb(4, 3))
    tree:add(f.reserved, tvb(7, 1))
    local at = 8
    while at + 4 <= header do
        local class = tvb(at, 2):uint()
        local kind = tvb(at + 2, 1):uint()
        local len = bit.band(tvb(at + 3, 1):uint(), 0x1F) * 4
        if at + 4 + len > header then
            tree:add_proto_expert_info(e_bad)
            break
        end
        local name = class == CLASS and option_names[kind]
            or string.format("class 0x%04x type 0x%02x", class, kind)
        local opt = tree:add(f.option, tvb(at, 4 + len)):set_text("Option: " .. (name or "?"))
        opt:add(f.opt_class, tvb(at, 2))
        opt:add(f.opt_type, tvb(at + 2, 1))
        opt:add(f.opt_length, tvb(at + 3, 1))
        if len > 0 then
            local data = tvb(at + 4, len)
            if class == CLASS then
                mirror_option(opt, kind, data)
            else
                opt:add(f.data, data)
            end
        end
        at = at + 4 + len
    end
    if tvb:len() > header then
        local payload = tvb(header):tvb()
        local proto = tvb(2, 2):uint()
        if proto == 0x6558 then
            eth:call(payload, pinfo, root)
        else
            ethertype:try(proto, payload, pinfo, root)
        end
    end
    return tvb:len()
end

DissectorTable.get("udp.port"):add(6081, p)
